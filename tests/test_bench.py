"""`python -m lra.bench` on tiny sizes writes its CSV, table and plot."""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import CLI, ok

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


def test_bench_writes_positive_numbers_for_backbones_and_peers(cli: CLI, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    ok(cli.run("--task", "listops_small", "--lengths", "24", "--models", "baseline",
               "--peers", "transformer", "--repeats", "1", "--out", str(out),
               "task.encoder.num_layers=1", module="lra.bench"))  # fmt: skip
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
