"""The DataModule: Arrow caches keyed by settings, padded batches, the prepare CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lra.data.listops import ListOpsDataModule
from lra.data.prepare import main as prepare

GENERATOR = dict(
    max_depth=3, max_args=4, min_length=5, max_length=60, num_train=64, num_val=16, num_test=16
)


def datamodule(tmp_path: Path, **changes) -> ListOpsDataModule:
    kwargs = dict(
        task_name="listops_tiny", cache_dir=str(tmp_path / "cache"), max_len=60, batch_size=8,
        dir=str(tmp_path / "listops"), generator=GENERATOR,
    )  # fmt: skip
    return ListOpsDataModule(**{**kwargs, **changes})


def test_prepare_tokenises_once_and_batches_are_padded_with_zeros(tmp_path: Path) -> None:
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 64, "val": 16, "test": 16}
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(caches) == 3
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (8, 60) and batch["label"].shape == (8,)
    ids = batch["input_ids"]
    assert ids.min() >= 0 and ids.max() < dm.vocab_size
    lengths = (ids != 0).sum(1)
    for row, n in zip(ids, lengths, strict=True):
        assert (row[:n] != 0).all() and (row[n:] == 0).all(), "real tokens first, then padding"

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    datamodule(tmp_path).prepare_data()
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == mtimes


def test_cache_key_follows_the_preprocessing_settings(tmp_path: Path) -> None:
    a = datamodule(tmp_path)
    a.prepare_data()
    b = datamodule(tmp_path, max_len=20)
    assert a.cache_path("train") != b.cache_path("train")
    b.prepare_data()
    b.setup()
    assert max(len(x) for x in b.splits["train"]["input_ids"]) <= 20


def test_pad_to_batch_pads_to_the_longest_row(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, pad_to="batch")
    dm.prepare_data()
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[1] == int((batch["input_ids"] != 0).sum(1).max())


def test_missing_files_without_generation_raise_with_the_fix(tmp_path: Path) -> None:
    dm = datamodule(tmp_path, generate=False)
    with pytest.raises(FileNotFoundError, match="basic_train.tsv not found: run 'python -m lra"):
        dm.prepare_data()


def test_prepare_writes_the_official_layout_deterministically(tmp_path: Path) -> None:
    small = ["task.data.generator.num_train=100", "task.data.generator.num_val=10"]
    for out in ("a", "b"):
        assert prepare(["listops_small", "--seed", "5", "--out", str(tmp_path / out), *small]) == 0
    manifest = json.loads((tmp_path / "a" / "MANIFEST.json").read_text())
    assert manifest["seed"] == 5 and manifest["num_train"] == 100 and manifest["max_depth"] == 4
    assert manifest["basic_train.tsv"]["rows"] == 100
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_prepare_refuses_an_unknown_task(capsys: pytest.CaptureFixture) -> None:
    assert prepare(["listopz"]) == 2
    assert "Could not find 'task/listopz'" in capsys.readouterr().err
