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


def test_a_child_reports_its_own_peak_rss_not_its_parents():
    """ru_maxrss survives fork and exec, so a small child of a large process reports the parent's peak;
    peak_rss_mib() reads the child's own high-water mark."""
    import subprocess
    import sys

    import numpy as np

    from tests.test_ldm_fixtures import ROOT

    big = np.ones(40_000_000)            # 305 MiB held by this (the parent) process
    code = ("import resource, sys; sys.path.insert(0, sys.argv[1]); from bench.record import peak_rss_mib; "
            "print(peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, maxrss = map(float, subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True,
                                            text=True, check=True).stdout.split())
    assert big.sum() > 0 and own < 150
    if sys.platform.startswith("linux"):
        assert maxrss > 300               # the quirk this guards against
