"""Text: byte-level IMDB sentiment (Maas et al. 2011), 2 classes, as LRA reads it.

Sources, in this order, all under task.data.dir (default `data/`):
  1. `aclImdb/{train,test}/{pos,neg}/*.txt`, the Stanford release unpacked (labels from the
     folder: neg 0, pos 1; files in sorted order, pos then neg, as the Hugging Face builder);
  2. `imdb/**/{train,test}*.parquet|.arrow` (columns `text`, `label`), e.g. the Hub's files;
  3. `datasets.load_dataset("imdb")` when a network is there, saved as `imdb/{split}.parquet`.

Tokens: UTF-8 bytes + 1 (vocab 257, 0 = padding), at most max_len. LRA's paper says 4K; its
released config says 1000 (`task.max_len`). IMDB has no validation split and LRA validates on
the test split (`val_split: test`); `val_split: train` holds out a seeded fraction of train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.base import (
    BYTE_VOCAB,
    LRADataModule,
    byte_tokens,
    local_or_hub,
    iter_table,
    table_files,
)
from lra.registry import TASKS

HUB_NAME = "imdb"
LABELS = {"neg": 0, "pos": 1}
SOURCE_SPLITS = ("train", "test")
STANFORD_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


def read_stanford(split_dir: Path) -> Iterator[tuple[bytes, int]]:
    """(review bytes, label) from `aclImdb/<split>/{pos,neg}/*.txt`."""
    for name in ("pos", "neg"):
        for path in sorted((split_dir / name).glob("*.txt")):
            yield path.read_bytes(), LABELS[name]


def read_tables(files: list[Path]) -> Iterator[tuple[bytes, int]]:
    for row in iter_table(files, ["text", "label"]):
        yield row["text"].encode("utf-8"), int(row["label"])


@TASKS.register("text")
class TextDataModule(LRADataModule):
    vocab_size = BYTE_VOCAB
    num_classes = 2

    def __init__(
        self,
        dir: str,
        download: bool = True,
        val_split: str = "test",
        val_fraction: float = 0.1,
        val_seed: int = 0,
        strip: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if val_split not in ("test", "train"):
            raise ValueError(f"task.data.val_split must be test or train, not '{val_split}'")
        self.dir = Path(dir)
        self.download = download
        self.val_split = val_split
        self.val_fraction = val_fraction
        self.val_seed = val_seed
        self.strip = bool(strip)  # LRA's pipeline strips each review's leading/trailing whitespace

    def validates_on_test(self) -> bool:
        return self.val_split == "test"

    # Where each of our splits comes from in IMDB's two.
    def source_split(self, split: str) -> str:
        return {"train": "train", "val": self.val_split, "test": "test"}[split]

    def stanford_dirs(self, source: str) -> list[Path]:
        return [self.dir / "aclImdb" / source / name for name in ("pos", "neg")]

    def source_files(self, source: str) -> list[Path]:
        """The Stanford folders if present, else the local tables (empty if neither)."""
        if all(d.is_dir() for d in self.stanford_dirs(source)):
            return self.stanford_dirs(source)
        return table_files(self.dir / "imdb", source)

    def raw_files(self) -> dict[str, list[Path]]:
        return {
            split: self.source_files(self.source_split(split)) for split in ("train", "val", "test")
        }

    def fetch_raw(self) -> None:
        if all(self.source_files(s) for s in SOURCE_SPLITS):
            return
        expected = (
            f"{self.dir / 'aclImdb'}/{{train,test}}/{{pos,neg}}/*.txt (download {STANFORD_URL} "
            f"and unpack it into {self.dir}) or Parquet/Arrow files "
            f"{self.dir / 'imdb'}/{{train,test}}*.parquet"
        )
        local_or_hub("IMDB", expected, self.download, HUB_NAME, self.dir / "imdb",
                     SOURCE_SPLITS, self.cache_dir / "hub")  # fmt: skip

    def read_source(self, source: str) -> Iterator[tuple[bytes, int]]:
        files = self.source_files(source)
        if files and files[0].is_dir():
            yield from read_stanford(files[0].parent)
        else:
            yield from read_tables(files)

    def held_out(self, n: int) -> np.ndarray:
        """Which train rows are validation when val_split is train: a seeded fraction."""
        rng = np.random.default_rng(self.val_seed)
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[: int(round(n * self.val_fraction))]] = True
        return mask

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        rows = self.read_source(self.source_split(split))
        if self.val_split == "train" and split in ("train", "val"):
            rows = list(rows)
            val = self.held_out(len(rows))
            rows = [
                row for row, is_val in zip(rows, val, strict=True) if is_val == (split == "val")
            ]
        for text, label in rows:
            # ASCII whitespace, as tf.strings.strip in LRA's input pipeline
            yield byte_tokens(text.strip() if self.strip else text, self.max_len), label

    def cache_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"reader": "imdb-bytes-v1", "max_len": self.max_len}
        params["strip"] = self.strip
        params["val_split"] = self.val_split
        if self.val_split == "train":
            params.update(val_fraction=self.val_fraction, val_seed=self.val_seed)
        return params
