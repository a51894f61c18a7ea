"""Image: grey CIFAR-10 (Krizhevsky 2009), 10 classes, as LRA reads it.

Sources, in this order, all under task.data.dir (default `data/`):
  1. `cifar-10-batches-py/{data_batch_1..5,test_batch}`, the standard Python release (pickled
     dicts: `data` [N, 3072] uint8 as R, G, B planes of 32x32 row-major, `labels` [N]);
  2. `cifar10/**/{train,test}*.parquet|.arrow` (columns `img` or `image` holding PNG bytes,
     and `label`), e.g. the Hub's files;
  3. `datasets.load_dataset("cifar10")` when a network is there, saved as `cifar10/{split}.parquet`.

Splits as LRA (`tfds.load('cifar10', split='train[:90%]')` etc.): train = the first 90% of the
train set (45,000), val = the last 10% (5,000), test = test (10,000). (tfds' order of the train
set is its own; we keep the files' order.)

Grey, as LRA's `tf.image.rgb_to_grayscale` on uint8 images: Y = 0.2989 R + 0.5870 G + 0.1140 B
in float32 on [0, 1], back to uint8 as tf's convert_image_dtype does, trunc(Y * 255.5): that is
floor(Y * 255.5 / 255) of the 8-bit weighted sum, one level above a plain round-down for some
pixels. Tokens: the 1,024 intensities row-major + pixel_offset. LRA used offset 0 (vocab 256),
and its encoder's padding mask (token 0) hid every black pixel; the default offset 1 (vocab 257)
keeps them, so no pixel is padding.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lra.data.base import (
    PIXEL_VOCAB,
    LRADataModule,
    local_or_hub,
    iter_table,
    pixel_tokens,
    pixels_pad,
    table_files,
    warn_if_cropped,
)
from lra.registry import TASKS

HUB_NAME = "cifar10"
PYTHON_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
SOURCE_SPLITS = ("train", "test")
SIDE = 32
RGB_TO_GREY = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 RGB -> [...] uint8 grey, bit for bit as tf.image.rgb_to_grayscale."""
    y = (rgb.astype(np.float32) * np.float32(1 / 255)) @ RGB_TO_GREY  # [...], in [0, 1]
    return (y * np.float32(255.5)).astype(np.uint8)  # convert_image_dtype: scale 255 + 0.5, trunc


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> RGB images [N, 32, 32, 3] uint8 and labels [N]."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:  # a truncated or foreign file
        raise ValueError(
            f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); unpack "
            "cifar-10-python.tar.gz again"
        ) from None
    data, labels = (batch.get(b"data"), batch.get(b"labels")) if isinstance(batch, dict) else (None, None)
    if data is None or labels is None or np.asarray(data).shape[1:] != (3 * SIDE * SIDE,):
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch (a dict with b'data' [N, 3072] and b'labels')"
        )
    rgb = np.asarray(data, dtype=np.uint8).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return rgb, np.asarray(labels, dtype=np.int64)


def decode_image(value: Any, where: str) -> np.ndarray:
    """A table cell (PNG bytes in {'bytes', 'path'}, as `datasets` stores images) -> [32, 32, 3]."""
    raw = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(raw, bytes):
        raise ValueError(f"{where}: expected an image as PNG bytes, got {type(raw).__name__}")
    rgb = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    if rgb.shape != (SIDE, SIDE, 3):
        raise ValueError(f"{where}: expected a 32x32 image, got {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb


def read_tables(files: list[Path]) -> Iterator[tuple[np.ndarray, int]]:
    for i, row in enumerate(iter_table(files, None)):
        image = row["img"] if "img" in row else row.get("image")
        yield decode_image(image, f"{files[0].parent} row {i}"), int(row["label"])


@TASKS.register("image")
class ImageDataModule(LRADataModule):
    vocab_size = PIXEL_VOCAB
    pads = staticmethod(pixels_pad)
    num_classes = 10

    def __init__(
        self, dir: str, download: bool = True, pixel_offset: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if pixel_offset not in (0, 1):
            raise ValueError(f"task.data.pixel_offset must be 0 (LRA) or 1, not {pixel_offset}")
        self.dir = Path(dir)
        self.download = download
        self.pixel_offset = pixel_offset
        warn_if_cropped(self.max_len, SIDE * SIDE)

    def python_files(self, source: str) -> list[Path]:
        return [self.dir / "cifar-10-batches-py" / name for name in BATCHES[source]]

    def source_files(self, source: str) -> list[Path]:
        """The Python release if complete, else the local tables (empty if neither)."""
        if all(p.is_file() for p in self.python_files(source)):
            return self.python_files(source)
        return table_files(self.dir / "cifar10", source)

    def raw_files(self) -> dict[str, list[Path]]:
        train = self.source_files("train")
        return {"train": train, "val": train, "test": self.source_files("test")}

    def fetch_raw(self) -> None:
        if all(self.source_files(s) for s in SOURCE_SPLITS):
            return
        expected = (
            f"{self.dir / 'cifar-10-batches-py'}/{{data_batch_1..5,test_batch}} (download "
            f"{PYTHON_URL} and unpack it into {self.dir}) or Parquet/Arrow files "
            f"{self.dir / 'cifar10'}/{{train,test}}*.parquet"
        )
        local_or_hub("CIFAR-10", expected, self.download, HUB_NAME, self.dir / "cifar10",
                     SOURCE_SPLITS, self.cache_dir / "hub")  # fmt: skip

    def read_source(self, source: str) -> Iterator[tuple[np.ndarray, int]]:
        files = self.source_files(source)
        if files and files[0].parent.name == "cifar-10-batches-py":
            for path in files:
                rgb, labels = read_python_batch(path)
                yield from zip(rgb, labels.tolist(), strict=True)
        else:
            yield from read_tables(files)

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        rows = list(self.read_source("test" if split == "test" else "train"))
        if split != "test":
            n_train = len(rows) * 9 // 10  # tfds' 'train[:90%]' and 'train[90%:]'
            rows = rows[:n_train] if split == "train" else rows[n_train:]
        for rgb, label in rows:
            yield pixel_tokens(to_grey(rgb), self.pixel_offset, self.max_len), label

    def cache_params(self) -> dict[str, Any]:
        return {"reader": "cifar10-grey-v1", "max_len": self.max_len, "offset": self.pixel_offset}
