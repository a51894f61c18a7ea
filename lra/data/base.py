"""What every LRA task shares: raw files -> token ids -> Arrow cache -> padded batches.

A task subclass says where its raw files are (`raw_files`), how to obtain them (`fetch_raw`),
how to read one split (`read_split`) and which settings change the tokens (`cache_params`).
The tokenised splits are cached with `datasets` under a key of those settings and the raw
files' sizes and mtimes, so a second run starts training in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lra.io import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK_ROWS = 10_000
FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int16")), "label": datasets.Value("int64")}
)


class LRADataModule(pl.LightningDataModule):
    vocab_size: ClassVar[int]
    num_classes: ClassVar[int]

    def __init__(
        self,
        task_name: str,
        cache_dir: str,
        max_len: int,
        batch_size: int,
        num_workers: int = 0,
        pad_to: str = "max_len",
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if pad_to not in ("max_len", "batch"):
            raise ValueError(f"task.data.pad_to must be max_len or batch, not '{pad_to}'")
        self.task_name = task_name
        self.cache_dir = Path(cache_dir)
        self.max_len = max_len
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pad_to = pad_to
        self.shuffle_seed = shuffle_seed
        self.splits: dict[str, datasets.Dataset] = {}

    # --- what a task provides -------------------------------------------------------------
    def raw_files(self) -> dict[str, Path]:
        raise NotImplementedError

    def fetch_raw(self) -> None:
        """Make the raw files exist (generate them) or raise FileNotFoundError saying how."""
        raise NotImplementedError

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        raise NotImplementedError

    def cache_params(self) -> dict[str, Any]:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------
    def cache_path(self, split: str) -> Path:
        stamp = {
            "task": type(self).__name__,
            "params": self.cache_params(),
            "file": [
                (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                for p in [self.raw_files()[split]]
            ],
        }
        key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.task_name}-{split}-{key}"

    def prepare_data(self) -> None:
        self.fetch_raw()
        for split in SPLITS:
            path = self.cache_path(split)
            if path.exists():
                continue
            log.info("tokenising %s %s into %s", self.task_name, split, path)
            with atomic_path(path) as tmp:
                self._tokenise(split).save_to_disk(str(tmp))

    def _tokenise(self, split: str) -> datasets.Dataset:
        chunks, ids, labels = [], [], []
        for x, y in self.read_split(split):
            ids.append(x)
            labels.append(y)
            if len(ids) == CHUNK_ROWS:
                chunks.append(datasets.Dataset.from_dict({"input_ids": ids, "label": labels}, FEATURES))
                ids, labels = [], []
        if ids or not chunks:
            chunks.append(datasets.Dataset.from_dict({"input_ids": ids, "label": labels}, FEATURES))
        return datasets.concatenate_datasets(chunks)

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.splits:
                ds = datasets.load_from_disk(str(self.cache_path(split)))
                self.splits[split] = ds.with_format("numpy")

    def label_counts(self, split: str) -> np.ndarray:
        labels = np.asarray(self.splits[split]["label"])
        return np.bincount(labels, minlength=self.num_classes)

    def majority_rate(self, split: str) -> float:
        counts = self.label_counts(split)
        return float(counts.max() / max(1, counts.sum()))

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = self.max_len if self.pad_to == "max_len" else max(len(r["input_ids"]) for r in rows)
        ids = np.zeros((len(rows), n), dtype=np.int64)  # 0 = padding
        for i, r in enumerate(rows):
            x = r["input_ids"][:n]
            ids[i, : len(x)] = x
        labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
        return {"input_ids": torch.from_numpy(ids), "label": torch.from_numpy(labels)}

    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        # Stateful: Lightning saves the loader's position in each checkpoint. Training order is
        # a function of (seed, epoch) alone (DistributedSampler.set_epoch, called by Lightning),
        # so a resumed run sees exactly the batches the uninterrupted run would have seen.
        sampler = None
        if shuffle:
            trainer = getattr(self, "trainer", None)
            sampler = DistributedSampler(
                self.splits[split],
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
                shuffle=True,
                seed=self.shuffle_seed,
            )
        return StatefulDataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", shuffle=False)
