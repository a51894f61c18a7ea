"""The benchmark harness measures a point in a fresh process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lra.bench.measure import measure


@pytest.fixture(autouse=True)
def importable_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))


def linear_step(n: int, device: str = "cpu"):
    """A factory as benchmarks write them: build once, return step()."""
    layer = torch.nn.Linear(n, n).to(device)
    x = torch.randn(64, n, device=device)

    def step() -> None:
        layer(x).sum().backward()

    return step


def test_a_point_reports_positive_time_and_memory_growth() -> None:
    small = measure("test_bench_measure:linear_step", {"n": 64}, repeats=2)
    big = measure("test_bench_measure:linear_step", {"n": 2048}, repeats=2)
    assert "error" not in small and "error" not in big, (small, big)
    assert small["n"] == 64 and small["seconds"] > 0
    assert big["peak_mb"] >= 0 and big["seconds"] > small["seconds"]


def test_a_failing_point_reports_its_error_instead_of_crashing() -> None:
    point = measure("test_bench_measure:no_such_factory", {"n": 1})
    assert point["error"] and point["seconds"] != point["seconds"]  # NaN
