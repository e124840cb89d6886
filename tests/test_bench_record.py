"""bench/record.py: the machine description every bench record carries, and alternate timing of peers."""

from __future__ import annotations

from tests.test_ldm_fixtures import bench_module


def test_cpuinfo_reads_the_model_and_the_bf16_flags(tmp_path):
    record = bench_module("record")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
                    "flags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu\n")
    assert record.cpuinfo(info) == {"model_name": "Intel(R) Xeon(R) Processor",
                                    "flags": ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]}
    assert record.cpuinfo(tmp_path / "absent") == {"model_name": "", "flags": []}


def test_machine_info_keeps_the_old_keys_and_names_the_commit(tmp_path):
    record = bench_module("record")
    m = record.machine_info()
    assert {"cpu_model", "cpu_flags", "cpu_count", "kernel", "python", "torch", "numpy", "tta", "git_commit",
            "node", "platform", "processor"} <= set(m)
    assert m["cpu_count"] >= 1 and m["tta"] and m["torch"] and m["numpy"]
    assert m["git_commit"] == "" or len(m["git_commit"]) == 40
    assert record.git_commit(tmp_path) == ""                 # not a git checkout


def test_peers_are_warmed_up_then_timed_in_rotating_order():
    record = bench_module("record")
    calls = []
    times = record.time_alternately({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]    # warm-up, then a first, b first, a first
    assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)
