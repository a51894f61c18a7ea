"""`python -m lra.bench` on tiny sizes writes its CSV, table and plot."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lra.bench import efficiency
from lra.bench.efficiency import main as bench
from lra.bench.measure import measure_here

COLUMNS = [
    "name",
    "n",
    "batch",
    "device",
    "params",
    "seconds",
    "steps_per_s",
    "peak_mb",
    "mfu",
    "rounds",
    "seconds_lo",
    "seconds_hi",
    "vs_baseline",
    "vs_baseline_lo",
    "vs_baseline_hi",
    "error",
]


def test_bench_writes_positive_numbers_for_backbones_and_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each point here in this process: the fresh process around a point has its own test
    # (tests/test_bench_measure.py); what is tested here is the table the points make.
    calls = []

    def measured(factory, kwargs, **options):
        calls.append(kwargs.get("model") or kwargs["peer"])
        return measure_here(factory, kwargs, **options)

    monkeypatch.setattr(efficiency, "measure", measured)
    out = tmp_path / "bench"
    assert bench(["--task", "listops_small", "--lengths", "24", "--models", "baseline",
                  "--peers", "transformer", "--repeats", "1", "--rounds", "2", "--out", str(out),
                  "task.encoder.num_layers=1"]) == 0  # fmt: skip
    assert calls == ["baseline", "transformer", "transformer", "baseline"], "interleaved, rotated"
    with open(out / "efficiency.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    names = ["baseline", "peer:transformer"]
    assert [(r["name"], r["n"]) for r in rows] == [(name, "24") for name in names]
    for r in rows:
        assert r["error"] == "" and float(r["seconds"]) > 0 and float(r["steps_per_s"]) > 0
        assert float(r["peak_mb"]) >= 0
    assert int(rows[0]["params"]) > 0
    base, peer = rows
    assert base["rounds"] == peer["rounds"] == "2" and float(base["vs_baseline"]) == 1.0
    lo, mid, hi = (float(peer[k]) for k in ("vs_baseline_lo", "vs_baseline", "vs_baseline_hi"))
    assert 0 < lo <= mid <= hi
    assert float(peer["seconds_lo"]) <= float(peer["seconds"]) <= float(peer["seconds_hi"])
    table = (out / "efficiency.md").read_text()
    assert "| baseline |" in table and "(1.00×)" in table and "| peer:transformer |" in table
    assert f"({mid:.2f}×, {lo:.2f}–{hi:.2f})" in table, "the ratio with its spread over rounds"
    assert "2 interleaved rounds" in table
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
