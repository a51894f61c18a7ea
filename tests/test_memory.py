"""The GPU memory check before training (lra/memory.py): the line through two measured steps, and
the error that names what fits. (The measurement itself needs CUDA: `python -m lra.gpucheck`.)"""

from __future__ import annotations

import pytest

from lra.memory import HEADROOM, check_fits, from_points

GiB = 2**30


def test_the_peak_is_the_line_through_batches_1_and_2_plus_adamws_state() -> None:
    est = from_points(b1=3 * GiB, b2=5 * GiB, weights=GiB // 8, free=80 * GiB)  # 1 GiB of state
    assert est.per_sample == 2 * GiB and est.fixed == 2 * GiB
    assert est.peak(32) == 66 * GiB
    assert est.largest_batch() == int((HEADROOM * 80 - 2) // 2)  # 35


def test_a_batch_that_fits_passes_and_one_that_does_not_names_the_settings_that_do() -> None:
    est = from_points(b1=3 * GiB, b2=5 * GiB, weights=0, free=40 * GiB)  # 1 + 2 per example
    check_fits(est, per_device=16, global_batch=16, accumulate=1)  # 33 GiB <= 36 GiB
    with pytest.raises(MemoryError) as e:
        check_fits(est, per_device=32, global_batch=32, accumulate=1)  # 65 GiB
    message = str(e.value)
    assert "needs about 65.0 GiB on its GPU at a per-device batch of 32" in message
    assert "40.0 GiB is free" in message
    assert "a per-device batch of 17 fits" in message
    assert "task.optim.batch_size=32 and set trainer.accumulate_grad_batches=2" in message


def test_when_no_batch_fits_it_says_so() -> None:
    est = from_points(b1=30 * GiB, b2=31 * GiB, weights=2 * GiB, free=40 * GiB)  # 45 GiB fixed
    with pytest.raises(MemoryError, match="no batch fits: use a smaller model"):
        check_fits(est, per_device=1, global_batch=8, accumulate=8)
