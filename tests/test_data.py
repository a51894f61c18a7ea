"""The DataModule: Arrow caches keyed by settings, padded batches, the prepare CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from lra.build import build_datamodule, compose
from lra.data.listops import ListOpsDataModule
from lra.data.prepare import main as prepare

GENERATOR = dict(
    max_depth=3, max_args=4, min_length=5, max_length=60, num_train=64, num_val=16, num_test=16
)


def datamodule(tmp_path: Path, **changes) -> ListOpsDataModule:
    kwargs = dict(
        task_name="listops_tiny", cache_dir=str(tmp_path / "cache"), max_len=60, batch_size=8,
        dir=str(tmp_path / "release"), generated_dir=str(tmp_path / "listops"),
        generator=GENERATOR,
    )  # fmt: skip
    return ListOpsDataModule(**{**kwargs, **changes})


def test_prepare_tokenises_once_and_batches_are_padded_with_zeros(tmp_path: Path) -> None:
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 64, "val": 16, "test": 16}
    caches = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
    assert len(caches) == 3  # and the lock file runs take turns with
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
    with pytest.raises(FileNotFoundError, match=r"release/basic_train.tsv not found \(looked in "
                       r".*release/ and .*listops/\): run 'python -m lra"):  # fmt: skip
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


def test_prepare_never_deletes_or_replaces_files_it_did_not_write(tmp_path: Path, capsys) -> None:
    small = ["task.data.generator.num_train=20", "task.data.generator.num_val=5",
             "task.data.generator.num_test=5"]  # fmt: skip
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a researcher's notes")
    assert prepare(["listops_small", "--out", str(out), *small]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds files this generator did not write (notes.txt)" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "refused: nothing written"
    assert prepare(["listops_small", "--out", str(out), "--force", *small]) == 0
    assert (out / "notes.txt").read_text() == "a researcher's notes"
    assert {p.name for p in out.iterdir()} == {"notes.txt", "MANIFEST.json", "basic_train.tsv",
                                               "basic_val.tsv", "basic_test.tsv"}  # fmt: skip
    (out / "more.txt").write_text("written after")  # the folder is now the generator's own
    assert prepare(["listops_small", "--out", str(out), "--seed", "3", *small]) == 0
    assert (out / "more.txt").exists() and (out / "notes.txt").exists()
    assert json.loads((out / "MANIFEST.json").read_text())["seed"] == 3
    assert not list(tmp_path.glob(".mine*")), "no temporary folder is left behind"


def test_listops_is_generated_apart_from_the_release_folder(tmp_path: Path) -> None:
    cfg = compose(["task=listops", f"paths.data_dir={tmp_path}", "task.data.generator.num_train=20",
                   "task.data.generator.num_val=5", "task.data.generator.num_test=5",
                   "task.data.generator.max_length=60", "task.data.generator.min_length=5",
                   "task.data.generator.max_depth=3"])  # fmt: skip
    user = tmp_path / "lra_release" / "README.txt"
    user.parent.mkdir()
    user.write_text("the release's own file")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    assert dm.dir == tmp_path / "generated" / "listops-1000" and dm.source()["kind"] == "generated"
    assert sorted(p.name for p in (tmp_path / "lra_release").iterdir()) == ["README.txt"]
    assert set(dm.source()["sha256"]) == {"basic_train.tsv", "basic_val.tsv", "basic_test.tsv"}


def test_the_release_is_preferred_and_a_partial_one_is_an_error(tmp_path: Path) -> None:
    dm = datamodule(tmp_path)
    dm.prepare_data()  # a generated set
    release = tmp_path / "release"
    release.mkdir()
    rows = "Source\tTarget\n( ( [MAX 2 ) 9 ] )\t9\n"
    for split in ("train", "val"):
        (release / f"basic_{split}.tsv").write_text(rows)
    with pytest.raises(
        FileNotFoundError, match=r"release/basic_test.tsv not found, but .* a partial"
    ):
        datamodule(tmp_path).prepare_data()  # generate is on: still an error, nothing generated
    (release / "basic_test.tsv").write_text(rows)
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup()
    assert dm.dir == release and dm.source() == {"kind": "release", "dir": str(release)}
    assert len(dm.splits["test"]) == 1


def test_a_release_in_the_wrong_folder_is_named(tmp_path: Path) -> None:
    stray = tmp_path / "listops-1000"
    stray.mkdir()
    (stray / "basic_train.tsv").write_text("Source\tTarget\n")
    dm = ListOpsDataModule(task_name="listops", cache_dir=str(tmp_path / "cache"), max_len=60,
                           batch_size=8, dir=str(tmp_path / "lra_release" / "listops-1000"),
                           generated_dir=str(tmp_path / "generated"), generate=False)  # fmt: skip
    with pytest.raises(FileNotFoundError, match=rf"found {stray}/, which is not where the release"):
        dm.prepare_data()


def test_an_unreadable_cache_is_built_again(tmp_path: Path, caplog) -> None:
    dm = datamodule(tmp_path)
    dm.prepare_data()
    cache = dm.cache_path("train")
    (arrow,) = cache.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:64])  # truncated
    fresh = datamodule(tmp_path)
    with caplog.at_level(logging.WARNING):
        fresh.prepare_data()  # one process checks and rebuilds, under the lock
    fresh.setup()
    assert len(fresh.splits["train"]) == 64, "rebuilt from the raw files"
    assert any(f"{cache}: the cache cannot be used" in r.message for r in caplog.records)


def test_bytes_changed_inside_a_cache_are_found_and_the_cache_rebuilt(
    tmp_path: Path, caplog
) -> None:
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup()
    expected = [np.array(row) for row in dm.splits["val"]["input_ids"]]  # copies, not the mmap
    cache = dm.cache_path("val")
    (arrow,) = cache.glob("*.arrow")
    data = bytearray(arrow.read_bytes())
    data[-200:-100] = bytes(100)  # same size, other bytes: a silent corruption
    arrow.write_bytes(bytes(data))
    fresh = datamodule(tmp_path)
    with caplog.at_level(logging.WARNING):
        fresh.prepare_data()
    fresh.setup()
    assert any("do not match their checksums" in r.message for r in caplog.records)
    rebuilt = fresh.splits["val"]["input_ids"]
    assert len(rebuilt) == len(expected) and all(map(np.array_equal, rebuilt, expected))


def test_two_runs_preparing_at_once_get_the_same_data(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dms = [datamodule(tmp_path) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda dm: dm.prepare_data(), dms))
    for dm in dms:
        dm.setup()
    assert dms[0].cache_path("train") == dms[1].cache_path("train")
    assert len(dms[0].splits["train"]) == len(dms[1].splits["train"]) == 64
