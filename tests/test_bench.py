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
    "error",
]


def test_bench_writes_positive_numbers_for_backbones_and_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each point here in this process: the fresh process around a point has its own test
    # (tests/test_bench_measure.py); what is tested here is the table the points make.
    monkeypatch.setattr(efficiency, "measure", measure_here)
    out = tmp_path / "bench"
    assert bench(["--task", "listops_small", "--lengths", "24", "--models", "baseline",
                  "--peers", "transformer", "--repeats", "1", "--out", str(out),
                  "task.encoder.num_layers=1"]) == 0  # fmt: skip
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
    table = (out / "efficiency.md").read_text()
    assert "| baseline |" in table and "(1.00×)" in table and "| peer:transformer |" in table
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
