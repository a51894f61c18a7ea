"""The harness's callbacks and checkpoint writer."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from conftest import Runs

from lra.callbacks import AtomicCheckpointIO


def test_a_checkpoint_write_that_fails_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch
) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "best-step10.ckpt"
    io.save_checkpoint({"global_step": 10, "w": torch.ones(4)}, path)
    assert io.load_checkpoint(path)["global_step"] == 10

    def disk_full(obj, f) -> None:  # half a checkpoint, then no space left
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 20}, path)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 20}, path.with_name("best-step20.ckpt"))
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 10, "the old checkpoint, whole"
    assert [p.name for p in path.parent.iterdir()] == ["best-step10.ckpt"], "no half file, no temp"


def test_runs_write_their_checkpoints_through_it(runs: Runs, monkeypatch) -> None:
    written = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None) -> None:
        written.append(Path(path).name)
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    runs.train("logger=none")
    assert "last.ckpt" in written and any(name.startswith("best-step") for name in written)


def test_a_checkpoint_of_another_model_is_named_before_training(runs: Runs) -> None:
    runs.train("logger=none", run_dir="baseline")
    ckpt = runs.root / "baseline" / "checkpoints" / "last.ckpt"
    stamp = torch.load(ckpt, weights_only=False)["lra_run"]
    assert stamp["task"] == "listops_small" and stamp["model"] == "baseline"
    with pytest.raises(ValueError, match=r"holds another network: task=listops_small "
                       r"model=baseline, [\d,]+ parameters, where this run is task=listops_small "
                       r"model=igloo"):  # fmt: skip
        runs.train("logger=none", "model=igloo", f"ckpt_path={ckpt}", run_dir="igloo")
    assert not (runs.root / "igloo" / "checkpoints").exists(), "stopped before training"
