"""`benchmarks/bench_gpu.py --quick` as CI runs it, shrunk: the production scheduler, step, search and answer on
the tiny model and real footage, every table printed and every figure present (the figures themselves belong
in the benchmark's README, not in a pass/fail test)."""
from __future__ import annotations

import json

from benchmarks import bench_gpu


def test_quick_gpu_benchmark_runs_on_cpu_and_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    bench_gpu.main(["--quick", "--streams", "1,2", "--clips", "2", "--repeats", "1", "--hour-clips", "3",
                    "--answer-tokens", "4", "--json", str(out)])
    report = json.loads(out.read_text())
    (arch,) = report["archs"]
    assert arch["arch"] == "tiny" and [r["batched"]["streams"] for r in arch["runs"]] == [1, 2]
    for r in arch["runs"]:
        assert {"batched", "serial", "locked", "ratio", "ratio_locked", "model_only"} <= set(r)
        assert r["batched"]["frames"] == r["batched"]["streams"] * 2 * 8  # 2 clips of 8 frames per stream
        assert r["batched"]["fps_total"] > 0 and r["model_only"] > 0
    assert set(arch["answers"]) == {"1 min", "1 h"} and all(a["pieces"] >= 1 for a in arch["answers"].values())
    printed = capsys.readouterr().out
    assert "batched / serial" in printed and "first token s" in printed and "ReKV" in printed
