"""bench/results.jsonl is a tracked record: each line is a JSON object, and no path in it is one of the machine
that ran it (absolute, or climbing out of the repository's parent folder), so the record reads the same on a
fresh clone. Runs outside the repository are named relative to it (`../work-folder/...`) or as FILE:N."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


CLIMB = "../" * 2                  # out of the repository's parent folder
TEMP = "/" + "tmp" + "/"           # a temporary folder anywhere in the path


def machine_path(text: str) -> bool:
    return text.startswith(("/", "~")) or CLIMB in text or TEMP in text or text.startswith("..\\")


def test_results_lines_are_json_without_machine_paths():
    lines = (ROOT / "bench" / "results.jsonl").read_text().splitlines()
    assert lines
    bad = []
    for n, line in enumerate(lines, 1):
        record = json.loads(line)
        assert isinstance(record, dict), f"bench/results.jsonl:{n}: not a JSON object"
        bad += [f"{n}: {s[:80]}" for s in strings(record) if machine_path(s)]
    assert not bad, "bench/results.jsonl holds paths of the machine that ran it:\n" + "\n".join(bad[:10])


def test_machine_paths_are_recognised(tmp_path):
    absolute = tmp_path / "run" / "summary.json"          # a path of whatever machine runs the test
    assert machine_path(str(absolute)) and machine_path(str(ROOT / "bench" / "out"))
    assert machine_path(CLIMB + absolute.name) and machine_path("/".join(["..", "tmp", "s28", "s0.json"]))
    assert not machine_path("../work-folder/run/summary.json")
    assert not machine_path("bench/results.jsonl:290") and not machine_path("tta/assets/default")
