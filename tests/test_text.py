"""Text (byte-level IMDB): the Stanford layout, local tables, the Hub fallback, splits, tokens."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Runs
from lra_files import write_aclimdb

from lra.data.text import TextDataModule

REVIEWS = {
    "train": {"pos": ["Great!", "Très bien ✓", "ok"], "neg": ["Bad.", "Worst <br /> ever", "no"]},
    "test": {"pos": ["Superb"], "neg": ["Meh", "Nope"]},
}


def datamodule(tmp_path: Path, **changes) -> TextDataModule:
    kwargs = dict(
        task_name="text", cache_dir=str(tmp_path / "cache"), max_len=8, batch_size=4,
        dir=str(tmp_path / "data"), download=False,
    )  # fmt: skip
    return TextDataModule(**{**kwargs, **changes})


def ready(dm: TextDataModule) -> TextDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def rows(dm: TextDataModule, split: str) -> list[tuple[list[int], int]]:
    ds = dm.splits[split]
    return [(list(x), int(y)) for x, y in zip(ds["input_ids"], ds["label"], strict=True)]


def tokens(text: str, n: int = 8) -> list[int]:
    return [b + 1 for b in text.encode("utf-8")[:n]]


def test_stanford_layout_reads_utf8_bytes_plus_one_with_folder_labels(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "data", REVIEWS)
    dm = ready(datamodule(tmp_path))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 6, "val": 3, "test": 3}
    train = rows(dm, "train")
    # pos before neg, files in sorted order, as the Hugging Face builder
    assert [label for _, label in train] == [1, 1, 1, 0, 0, 0]
    assert train[0] == (tokens("Great!"), 1)
    assert train[1][0] == tokens("Très bien ✓")  # multi-byte characters are several tokens
    assert train[1][0][2] == 0xC3 + 1 and len(train[1][0]) == 8, "truncated to max_len bytes"
    assert dm.vocab_size == 257 and all(1 <= t <= 256 for x, _ in train for t in x)


def test_lra_validates_on_the_test_split_by_default(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "data", REVIEWS)
    dm = ready(datamodule(tmp_path))
    assert rows(dm, "val") == rows(dm, "test")
    assert [label for _, label in rows(dm, "test")] == [1, 0, 0]


def test_seeded_train_split_holds_out_a_fraction_deterministically(tmp_path: Path) -> None:
    reviews = {s: {"pos": [f"p{i}" for i in range(10)], "neg": [f"n{i}" for i in range(10)]}
               for s in ("train", "test")}  # fmt: skip
    write_aclimdb(tmp_path / "data", reviews)
    dm = ready(datamodule(tmp_path, val_split="train", val_fraction=0.25, val_seed=3))
    train, val = rows(dm, "train"), rows(dm, "val")
    assert (len(train), len(val), len(rows(dm, "test"))) == (15, 5, 20)
    texts = lambda split: {bytes(t - 1 for t in x) for x, _ in split}  # noqa: E731
    assert not texts(train) & texts(val) and len(texts(train) | texts(val)) == 20
    again = ready(datamodule(tmp_path / "again", dir=str(tmp_path / "data"), val_split="train",
                             val_fraction=0.25, val_seed=3))  # fmt: skip
    assert rows(again, "val") == val
    other = ready(datamodule(tmp_path / "other", dir=str(tmp_path / "data"), val_split="train",
                             val_fraction=0.25, val_seed=4))  # fmt: skip
    assert rows(other, "val") != val


def test_batches_are_padded_with_zeros_to_max_len(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "data", REVIEWS)
    dm = ready(datamodule(tmp_path, max_len=16))
    batch = next(iter(dm.test_dataloader()))
    ids = batch["input_ids"]
    assert ids.shape == (3, 16) and batch["label"].tolist() == [1, 0, 0]
    assert ids[1].tolist() == tokens("Meh", 16) + [0] * 13


def test_local_parquet_and_arrow_files_are_the_second_source(tmp_path: Path) -> None:
    tables = tmp_path / "data" / "imdb"
    (tables / "plain_text").mkdir(parents=True)
    pq.write_table(
        pa.table({"text": ["Good", "Bad film"], "label": [1, 0]}),
        tables / "plain_text" / "train-00000-of-00001.parquet",
    )
    datasets.Dataset.from_dict({"text": ["So-so"], "label": [0]}).save_to_disk(str(tables / "test"))
    dm = ready(datamodule(tmp_path))
    assert rows(dm, "train") == [(tokens("Good"), 1), (tokens("Bad film"), 0)]
    assert rows(dm, "test") == [(tokens("So-so"), 0)]


def test_offline_hub_fallback_fails_naming_the_paths_and_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline(name, **kwargs):
        calls.append(name)
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    dm = datamodule(tmp_path, download=True)
    with pytest.raises(FileNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert calls == ["imdb"]
    assert "datasets.load_dataset('imdb') failed (ConnectionError" in message
    assert f"{tmp_path / 'data' / 'aclImdb'}/{{train,test}}/{{pos,neg}}/*.txt" in message
    assert "aclImdb_v1.tar.gz" in message and f"{tmp_path / 'data' / 'imdb'}" in message


def test_hub_fallback_saves_local_parquet_read_on_later_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = ("train", "test", "unsupervised")
    hub = datasets.DatasetDict(
        {s: datasets.Dataset.from_dict({"text": [f"{s} text"], "label": [1]}) for s in splits}
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kwargs: hub)
    dm = ready(datamodule(tmp_path, download=True))
    assert sorted(p.name for p in (tmp_path / "data" / "imdb").iterdir()) == [
        "test.parquet",
        "train.parquet",
    ]
    assert rows(dm, "train") == [(tokens("train text"), 1)]


def test_missing_data_without_download_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"IMDB not found: expected .*aclImdb"):
        datamodule(tmp_path).prepare_data()


def test_a_run_offline_without_data_names_the_path(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub client fails at once, as with no network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read when datasets is imported
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError) as error:
        runs.train("task=text", "logger=none", "trainer=cpu", f"paths.data_dir={empty}", tiny=False)
    assert f"{empty}/aclImdb/{{train,test}}/{{pos,neg}}/*.txt" in str(error.value)
    assert "datasets.load_dataset('imdb') failed" in str(error.value)


def test_labels_are_binary(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "data", REVIEWS)
    dm = ready(datamodule(tmp_path))
    assert np.array_equal(dm.label_counts("train"), [3, 3]) and dm.num_classes == 2


def test_a_review_edited_in_place_is_read_again(tmp_path: Path) -> None:
    write_aclimdb(tmp_path / "data", REVIEWS)
    assert rows(ready(datamodule(tmp_path)), "train")[0] == (tokens("Great!"), 1)
    (first,) = [
        p for p in (tmp_path / "data").rglob("train/pos/*.txt") if p.read_text() == "Great!"
    ]
    first.write_text("Awesome")  # the folder's own timestamp need not change
    assert rows(ready(datamodule(tmp_path)), "train")[0] == (tokens("Awesome"), 1)


def test_reviews_are_stripped_of_outer_whitespace_as_lras_pipeline_unless_told(
    tmp_path: Path,
) -> None:
    padded = {"train": {"pos": ["  Great! \n"], "neg": ["\tBad.\r\n"]}, "test": {"pos": [" x "],
              "neg": ["y"]}}  # fmt: skip
    write_aclimdb(tmp_path / "data", padded)
    stripped = rows(ready(datamodule(tmp_path)), "train")
    assert stripped == [(tokens("Great!"), 1), (tokens("Bad."), 0)], "LRA's tokens"
    kept = rows(ready(datamodule(tmp_path, strip=False)), "train")
    assert kept == [(tokens("  Great! \n"), 1), (tokens("\tBad.\r\n"), 0)], "task.data.strip=false"
    caches = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "cache").glob("text-train-*")}
    assert len(list((tmp_path / "cache").glob("text-train-*"))) == 2, "a cache each, by its key"
    assert caches == {"text-train"}


def test_a_run_validated_on_the_test_split_says_so(tmp_path: Path) -> None:
    from lra.console import summary_lines

    assert datamodule(tmp_path).validates_on_test(), "LRA's Text: val is IMDB's test split"
    assert not datamodule(tmp_path, val_split="train").validates_on_test()
    results = {"run_name": "text-baseline-s0", "run_dir": "R", "test_acc": 0.6, "tested": "best",
               "test_majority_rate": 0.5, "val_acc_best": 0.6, "steps": 9, "fit_seconds": 1.0,
               "train_tokens_per_s": 1.0, "params": {"total": 9, "mixer": 3}}  # fmt: skip
    lines = summary_lines({**results, "val_is_test": True})
    assert lines[1] == (
        "text-baseline-s0: validation is this task's test split: the best val accuracy (and a "
        "checkpoint chosen by it: test_checkpoint=best) is a test number"
    )
    assert len(summary_lines({**results, "val_is_test": False})) == 2
