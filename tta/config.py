"""Frozen dataclass configs <-> strict JSON, and `--set a.b=value` overrides.

Every setting lives in a frozen dataclass next to the class it configures. JSON on disk is strict:
an unknown key, a value of the wrong type or a missing required key raises `ConfigError` naming the
dotted key and what was expected (for unknown keys: the valid keys). Overrides go through exactly the
same path, so `--set train.lr=abc` fails like a bad JSON file would. A float field takes finite numbers
only (no NaN / Infinity, which Python's json would otherwise read). Invariants are checked by each
dataclass's `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass; the message names the key."""


def to_dict(obj: Any) -> Any:
    """Fully resolved plain-JSON form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Any, *, where: str = "") -> T:
    """Build dataclass `cls` from `data`, strictly. `where` prefixes key names in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected an object for {cls.__name__}, got {_tname(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {_join(where, unknown[0])!r} for {cls.__name__}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key!r} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def from_known_fields(cls: type[T], data: dict, *, where: str = "") -> T:
    """Build dataclass `cls` from the keys of a foreign config `data` (diffusers', transformers') that `cls` has
    fields for, checked as from_dict checks them; its other keys (many: the foreign class's own) are not read."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return from_dict(cls, {k: v for k, v in data.items() if k in names}, where=where)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {_tname(value)} {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key {key!r}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list ({_type_name(tp)}), got {_tname(value)} {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r}: expected {len(args)} items, got {len(value)}")
            items = [_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            elem = args[0] if args else Any
            items = [_convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected an object, got {_tname(value)} {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # Python's json reads NaN / Infinity / -Infinity; no setting means anything with them (a NaN
            # even passes `x <= 0` range checks), so they are refused here for every float field
            try:
                number = float(value)
            except OverflowError:      # an int beyond float range
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"config key {key!r}: expected a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config key {key!r}: unsupported field type {tp!r}")
    raise ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {_tname(value)} {value!r}")


def installed_configs() -> Path | None:
    """The folder where an installed tta keeps the repository's configs/ (<prefix>/share/tta/configs, a wheel's
    data files, or the same under the user's base for `pip install --user`), or None."""
    import sys
    import sysconfig

    for prefix in (sys.prefix, sysconfig.get_path("data", sysconfig.get_preferred_scheme("user"))):
        folder = Path(prefix) / "share" / "tta" / "configs"
        if folder.is_dir():
            return folder
    return None


def source_configs() -> Path | None:
    """The configs/ folder of the source checkout tta runs from (`make venv` installs it editable, which puts no
    data files under <prefix>/share), or None where tta is no checkout's (a wheel's site-packages)."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "configs"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def check_number(value: Any, kind: type, what: str, error: type[Exception] = ValueError, *,
                 finite: bool = True) -> Any:
    """`value` as a number of `kind` (int or float) for a setting given in Python, or `error` naming `what`: a str
    such as "16000" failed later on Python's "'<=' not supported between instances of 'str' and 'int'". numpy
    numbers become Python's (so the setting writes as JSON); like from_dict, an int takes an integral float and a
    float takes finite numbers only (`finite=False`: infinities too, for a limit that turns its check off, never
    NaN); bools are not numbers. Python ints and floats are returned as they are."""
    if type(value) is kind and (kind is int or math.isfinite(value)):   # the common case, without the ABC checks
        return value                                                     # (a manifest read checks 2 a row)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if kind is int:
            if type(value) is int:
                return value
            if isinstance(value, numbers.Integral):
                return int(value)
            if math.isfinite(value) and float(value).is_integer():
                return int(value)
        elif is_real(value) or not finite and value == value:   # NaN is no number here
            return value if type(value) in (int, float) else float(value)
    expected = "an integer" if kind is int else "a finite number" if finite else "a number (not NaN)"
    raise error(f"{what}={value!r} must be {expected}")


def check_numbers(obj: Any, where: str = "", error: type[Exception] = ValueError) -> None:
    """For a config dataclass's `__post_init__`: every int or float in its fields (optional ones, tuples and the
    values of mappings included) is checked with `check_number`, every bool is a bool, and numpy numbers and
    bools are replaced by Python's.
    from_dict checks a config read from JSON; this checks one built in Python. `where` prefixes the field names."""
    hints = _field_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        fixed = _check_numbers_in(hints[f.name], value, _join(where, f.name), error)
        if fixed is not value:
            object.__setattr__(obj, f.name, fixed)


def is_real(x) -> bool:
    """A finite real number, numpy scalars included (np.float32 is no Python float), bools not; an int beyond
    float range is not one."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _check_numbers_in(tp: Any, value: Any, key: str, error: type[Exception]) -> Any:
    origin = get_origin(tp)
    if tp in (int, float):
        return check_number(value, tp, key, error)
    if tp is bool:   # a str such as "false" is true to Python; numpy's bool becomes Python's (JSON writes it)
        if type(value) is bool:
            return value
        if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):
            return bool(value)
        raise error(f"{key}={value!r} must be true or false (a bool)")
    if origin in (Union, types.UnionType):
        kinds = [a for a in get_args(tp) if a is not type(None)]
        if value is None or len(kinds) != 1:
            return value
        return _check_numbers_in(kinds[0], value, key, error)
    if origin in (tuple, list) and isinstance(value, (tuple, list)):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        if not args or (origin is tuple and Ellipsis not in get_args(tp) and len(args) != len(value)):
            return value
        items = [_check_numbers_in(args[min(i, len(args) - 1)], v, f"{key}[{i}]", error) for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value)) else type(value)(items)
    if origin is dict and isinstance(value, dict) and get_args(tp):
        items = {k: _check_numbers_in(get_args(tp)[1], v, f"{key}[{k!r}]", error) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    return value


def load_config(cls: type[T], path: str | os.PathLike) -> T:
    """Read a strict JSON config file into `cls`."""
    path = Path(path)
    if not path.is_file():
        for where, place in ((installed_configs, "installed in {}"), (source_configs, "in its source checkout, {}")):
            shipped = where() if path.parts[:1] == ("configs",) else None
            if shipped is not None and (shipped.parent / path).is_file():
                raise ConfigError(f"{path}: config file not found here; tta's shipped configs are "
                                  f"{place.format(shipped)}: --config {shipped.parent / path}")
        raise ConfigError(f"{path}: config file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason}); a config is JSON") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write the fully resolved config as pretty JSON, atomically."""
    from tta.checkpoint import atomic_write_text

    return atomic_write_text(path, json.dumps(to_dict(obj), indent=2, sort_keys=False) + "\n")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value). The value is JSON when it parses as JSON, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(obj: T, overrides: list[str] | tuple[str, ...], *, merge_sections: bool = True) -> T:
    """Return a new config with `a.b=value` overrides applied and validated like a JSON file. An object given
    for a config section sets the keys it names; `merge_sections=False` replaces the section whole, as tta did
    before 2026-12-07 (the rest of it at its defaults), to resume runs started that way."""
    if isinstance(overrides, str):   # each character would be an override: "override 't': expected KEY=VALUE"
        raise ConfigError(f"overrides={overrides!r}: expected a list of KEY=VALUE strings, got a single str (wrap "
                          "it in a list)")
    if not overrides:
        return obj
    data = to_dict(obj)
    for text in overrides:
        path, value = parse_override(text)
        node, cls = data, type(obj)
        for i, part in enumerate(path):
            fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
            if part not in fields or not isinstance(node, dict):
                prefix = ".".join(path[:i]) or "<top>"
                valid = ", ".join(sorted(fields)) if fields else "(none: not an object)"
                raise ConfigError(f"override {text!r}: unknown config key {'.'.join(path[:i + 1])!r}; "
                                  f"valid keys under {prefix}: {valid}")
            if i == len(path) - 1:
                section = _dataclass_of(get_type_hints(cls)[part])
                if merge_sections and section is not None and isinstance(value, dict) and isinstance(node.get(part), dict):
                    # an object for a config section sets the keys it names; the section's others stay (it reset
                    # them to their defaults: --set train={"max_steps": 5} also dropped batch size, rate, ...)
                    node[part] = _merge_section(section, node[part], value)
                else:
                    node[part] = value
            else:
                cls = _dataclass_of(get_type_hints(cls)[part])
                node = node[part]
    return from_dict(type(obj), data)


def _merge_section(cls: Any, old: dict, new: dict) -> dict:
    """`old` (a config section's dict) with `new`'s keys set, nested sections merged the same way; a value for a
    mapping or list field replaces it whole. Unknown keys are kept for from_dict to report."""
    out = dict(old)
    hints = get_type_hints(cls)
    for key, value in new.items():
        section = _dataclass_of(hints[key]) if key in hints else None
        if section is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_section(section, out[key], value)
        else:
            out[key] = value
    return out


def replace(obj: T, **changes: Any) -> T:
    return dataclasses.replace(obj, **changes)


def _dataclass_of(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def shortened(text: str, limit: int = 60) -> str:
    """`text` (a value as a message shows it: its repr, its JSON, a caption) cut to at most `limit` characters,
    ending in '...' where it was cut: a long value leaves the rest of its line readable."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and its noun in the number it takes, for a count in a message: counted(1, "bad item") is "1 bad item",
    counted(0, "row") "0 rows" (an import summary said "1 rows ..., 1 bad items skipped"); `plural` where it is not
    the noun and "s" (counted(2, "entry", "entries"))."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def option_name(key: str, flags: bool, shown: str | None = None, *, flag: str | None = None) -> str:
    """A setting as a message names it: the field (`valid_fraction`; with its value shown,
    `valid_fraction=0.5`) or, with `flags`, the command's option a user typed (`--valid-fraction`,
    `--valid-fraction 0.5`; `flag` where the option is not named after the field: `tta eval`'s clap_model is
    `--clap`)."""
    if flags:
        name = flag or f"--{key.replace('_', '-')}"
        return name if shown is None else f"{name} {shown}"
    return key if shown is None else f"{key}={shown}"


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _tname(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))
