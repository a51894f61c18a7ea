"""What every LRA task shares: raw files -> token ids -> Arrow cache -> padded batches.

A task subclass says where its raw files are (`raw_files`), how to obtain them (`fetch_raw`),
how to read one split (`read_split`) and which settings change the tokens (`cache_params`).
The tokenised splits are cached with `datasets` under a key of those settings and the raw
files' sizes and mtimes, so a second run starts training in seconds.

A row has one token sequence per name in `inputs` (`input_ids`; Retrieval has two documents)
and a label. The helpers below are the readings several tasks share: bytes and pixels as
tokens, local Parquet/Arrow tables, and the Hugging Face Hub fallback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytorch_lightning as pl
import torch
from filelock import FileLock
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lra.io import atomic_path, sha256

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHECKSUMS = "CHECKSUMS.json"  # in each cache folder: the SHA-256 of its files
CHUNK_ROWS = 10_000
BYTE_VOCAB = 257  # UTF-8 bytes + 1; 0 is padding
PIXEL_VOCAB = 257  # 8-bit intensities + pixel_offset (1); 0 is padding

# A split's rows: token ids (one array, or one per name in `inputs`) and the label.
Tokens = np.ndarray | tuple[np.ndarray, ...]


def features(inputs: Sequence[str]) -> datasets.Features:
    columns = {name: datasets.Sequence(datasets.Value("int16")) for name in inputs}
    return datasets.Features({**columns, "label": datasets.Value("int64")})


class LRADataModule(pl.LightningDataModule):
    vocab_size: ClassVar[int]
    num_classes: ClassVar[int]
    inputs: ClassVar[tuple[str, ...]] = ("input_ids",)

    @staticmethod
    def pads(data: Mapping[str, Any]) -> bool:
        """Can a batch under these `task.data` settings hold token 0 (padding)? Where it cannot,
        the encoder passes its mixers no mask (and SDPA may use its flash kernel)."""
        return True

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
        self._cache_keys: dict[str, str] = {}  # split -> key, once its files are known
        self.used_splits: tuple[str, ...] = SPLITS  # what prepare_data and setup read
        self.labelled = True  # False: batches carry the inputs alone (`training_inputs_only`)

    def training_inputs_only(self) -> None:
        """Self-pretraining (lra.pretraining): from here on this DataModule tokenises, loads and
        batches the training split alone, and its batches hold the inputs without the labels; the
        validation and test splits are never read, and asking for their loaders is an error."""
        self.used_splits, self.labelled = ("train",), False

    # --- what a task provides -------------------------------------------------------------
    def raw_files(self) -> dict[str, Path | list[Path]]:
        """The file(s) each split is read from; their sizes and mtimes key the cache."""
        raise NotImplementedError

    def fetch_raw(self) -> None:
        """Make the raw files exist (generate them) or raise FileNotFoundError saying how."""
        raise NotImplementedError

    def read_split(self, split: str) -> Iterator[tuple[Tokens, int]]:
        raise NotImplementedError

    def cache_params(self) -> dict[str, Any]:
        raise NotImplementedError

    def source(self) -> dict[str, Any]:
        """Where the data came from, for results.json and W&B (a task that can also generate its
        data says which: the release or its own set, with checksums)."""
        return {"kind": "files"}

    def input_files(self, split: str) -> list[Path]:
        """Every file a split's rows are read from: `raw_files`, folders expanded to the files
        below them (IMDB's reviews). A task that reads more than its raw files says so here
        (Pathfinder: every image its metadata names)."""
        files = self.raw_files()[split]
        out: list[Path] = []
        for p in files if isinstance(files, list) else [files]:
            out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return out

    # --- shared ----------------------------------------------------------------------------
    def cache_path(self, split: str) -> Path:
        """The cache of a split, keyed by the reader's settings and the identity (path, size,
        mtime) of every file the split is read from: a changed, added or restored file is a new key."""
        if split not in self._cache_keys:
            files = []
            for p in self.input_files(split):
                st = os.stat(p)
                files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
            stamp = {"task": type(self).__name__, "params": self.cache_params(), "file": files}
            digest = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()
            self._cache_keys[split] = digest[:16]
        return self.cache_dir / f"{self.task_name}-{split}-{self._cache_keys[split]}"

    def prepare_data(self) -> None:
        # One process at a time per task and cache folder: two runs started together find (or
        # make) the same files and the same caches, rather than one changing the other's.
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.cache_dir / f".{self.task_name}.lock")):
            self.fetch_raw()
            self._cache_keys.clear()  # the files as they are now, after any generation
            for split in self.used_splits:
                path = self.cache_path(split)
                if not path.exists():
                    log.info("tokenising %s %s into %s", self.task_name, split, path)
                elif (problem := self._unusable(path)) is None:
                    continue
                else:
                    log.warning("%s: the cache cannot be used (%s); building it again from the "
                                "raw files", path, problem)  # fmt: skip
                self._write_cache(split, path)

    def _write_cache(self, split: str, path: Path) -> None:
        """Tokenise a split into `path`, with the SHA-256 of each of its files (CHECKSUMS.json)."""
        with atomic_path(path) as tmp:
            self._tokenise(split).save_to_disk(str(tmp))
            sums = {f.name: sha256(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True))

    def _unusable(self, path: Path) -> str | None:
        """Why the cache at `path` cannot be used, or None: its files must be the ones it was
        written with (a cache without checksums, from an older version, is taken as it is) and
        load. Checked in `prepare_data`, under the lock, by one process."""
        try:
            sums = json.loads((path / CHECKSUMS).read_text())
        except FileNotFoundError:
            sums = {}
        except ValueError:
            return f"{CHECKSUMS} is unreadable"
        if not all((path / n).is_file() and sha256(path / n) == h for n, h in sums.items()):
            return "its files do not match their checksums"
        try:
            datasets.load_from_disk(str(path))
        except (OSError, pa.ArrowInvalid, ValueError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    def _tokenise(self, split: str) -> datasets.Dataset:
        schema = features(self.inputs)
        chunks: list[datasets.Dataset] = []
        columns: dict[str, list[Any]] = {name: [] for name in (*self.inputs, "label")}

        def flush() -> None:
            chunks.append(datasets.Dataset.from_dict(columns, schema))
            for rows in columns.values():
                rows.clear()

        for x, y in self.read_split(split):
            for name, ids in zip(self.inputs, x if isinstance(x, tuple) else (x,), strict=True):
                columns[name].append(ids)
            columns["label"].append(y)
            if len(columns["label"]) == CHUNK_ROWS:
                flush()
        if columns["label"] or not chunks:
            flush()
        dataset = datasets.concatenate_datasets(chunks)
        if len(dataset) == 0:
            files = self.raw_files()[split]
            raise ValueError(
                f"{self.task_name} {split}: no rows in {files}: the split is empty (a header only, "
                "or every example unreadable); restore the file or generate the data again"
            )
        classes = np.unique(dataset.with_format("numpy")["label"])
        if len(classes) == 1:
            log.warning(
                "%s %s: every one of the %d rows has label %d: a split with a single class "
                "cannot tell a model from a constant", self.task_name, split, len(dataset),
                classes[0],
            )  # fmt: skip
        return dataset

    def setup(self, stage: str | None = None) -> None:
        for split in self.used_splits:
            if split not in self.splits:
                rows = self._load_cache(split)
                if not self.labelled:
                    rows = rows.remove_columns("label")
                self.splits[split] = rows.with_format("numpy")

    def _load_cache(self, split: str) -> datasets.Dataset:
        """The tokenised split, as `prepare_data` checked (and if need be rebuilt) it."""
        path = self.cache_path(split)
        try:
            return datasets.load_from_disk(str(path))
        except (OSError, pa.ArrowInvalid, ValueError) as e:
            raise RuntimeError(
                f"{path}: the cache cannot be read ({type(e).__name__}: {e}); run the task again "
                "(prepare_data rebuilds it) or delete the folder"
            ) from e

    def label_counts(self, split: str) -> np.ndarray:
        labels = np.asarray(self.splits[split]["label"])
        return np.bincount(labels, minlength=self.num_classes)

    def validates_on_test(self) -> bool:
        """Is this task's validation split its test split? (Text: IMDB has no validation set, and
        LRA validated on test.) Then the best val accuracy, and a checkpoint chosen by it, are
        test numbers: the run summary and the report say so."""
        return False

    def majority_rate(self, split: str) -> float:
        counts = self.label_counts(split)
        return float(counts.max() / max(1, counts.sum()))

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for name in self.inputs:
            n = self.max_len if self.pad_to == "max_len" else max(len(r[name]) for r in rows)
            ids = np.zeros((len(rows), n), dtype=np.int64)  # 0 = padding
            for i, r in enumerate(rows):
                x = r[name][:n]
                ids[i, : len(x)] = x
            batch[name] = torch.from_numpy(ids)
        if not self.labelled:
            return batch
        labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
        return {**batch, "label": torch.from_numpy(labels)}

    def _loader(self, split: str, shuffle: bool) -> StatefulDataLoader:
        if split not in self.used_splits:
            raise RuntimeError(
                f"{self.task_name}: the {split} split is not read here: this DataModule serves the "
                f"{', '.join(self.used_splits)} split(s) alone (self-pretraining reads the "
                "training inputs only)"
            )
        # Stateful: Lightning saves the loader's position in each checkpoint. Training order is
        # a function of (seed, epoch) alone (DistributedSampler.set_epoch), so a resumed run sees
        # exactly the batches the uninterrupted run would have seen.
        sampler = None
        trainer = getattr(self, "trainer", None)
        on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
        if shuffle:
            sampler = DistributedSampler(
                self.splits[split],
                num_replicas=trainer.world_size if trainer else 1,
                rank=trainer.global_rank if trainer else 0,
                shuffle=True,
                seed=self.shuffle_seed,
            )
            # The epoch is set before Lightning makes the first iterator: on a resume inside a
            # later epoch, Lightning makes it (and fast-forwards it to the saved position) before
            # it calls set_epoch, so the rest of that epoch would follow epoch 0's order.
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed if trainer else 0)
        return StatefulDataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=on_gpu,  # page-locked batches: the copy to the GPU runs asynchronously
            collate_fn=self.collate,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test", shuffle=False)


# --- readings several tasks share -----------------------------------------------------------
def byte_tokens(text: bytes, max_len: int) -> np.ndarray:
    """UTF-8 bytes + 1, so 0 stays padding (vocab 257, as tfds' ByteTextEncoder); first max_len."""
    return np.frombuffer(text[:max_len], dtype=np.uint8).astype(np.int16) + 1


def warn_if_cropped(max_len: int, pixels: int) -> None:
    if max_len < pixels:
        log.warning(
            "task.max_len=%d is shorter than the %d pixels of an image: each keeps its first "
            "%d pixels (row-major), which is only good for smoke tests", max_len, pixels, max_len,
        )  # fmt: skip


def pixels_pad(data: Mapping[str, Any]) -> bool:
    """The pixel tasks' `pads`: fixed length, so only LRA's offset 0 makes a token 0 (black)."""
    return data.get("pixel_offset", 1) == 0


def pixel_tokens(pixels: np.ndarray, offset: int, max_len: int) -> np.ndarray:
    """8-bit intensities, row-major, + offset. LRA used offset 0, so its encoder's padding mask
    (token 0) also hid every black pixel; offset 1 keeps them."""
    return pixels.reshape(-1)[:max_len].astype(np.int16) + offset


def table_files(root: Path, split: str) -> list[Path]:
    """Parquet/Arrow files of one split under root, sorted: the Hub's layout
    (`plain_text/train-00000-of-00001.parquet`) or `save_to_disk`'s (`train/data-00000.arrow`)."""
    found = []
    for path in root.rglob("*"):
        if path.suffix not in (".parquet", ".arrow"):
            continue
        if re.split(r"[-_.]", path.name)[0] == split or path.parent.name == split:
            found.append(path)
    return sorted(found)


def iter_table(files: list[Path], columns: list[str] | None) -> Iterator[dict[str, Any]]:
    """Rows of Parquet or Arrow tables (IPC stream, as `datasets` writes them, or IPC file);
    `columns` None reads them all."""
    for path in files:
        batches = (
            pq.ParquetFile(path).iter_batches(columns=columns)
            if path.suffix == ".parquet"
            else arrow_batches(path)
        )
        for batch in batches:
            missing = [c for c in columns or [] if c not in batch.schema.names]
            if missing:
                raise ValueError(f"{path}: no column {missing[0]!r}; it has {batch.schema.names}")
            yield from (batch.select(columns) if columns else batch).to_pylist()


def arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        yield from pa.ipc.open_stream(pa.memory_map(str(path)))
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        yield from (reader.get_batch(i) for i in range(reader.num_record_batches))


def local_or_hub(
    dataset: str, expected: str, download: bool, name: str, out_dir: Path,
    splits: Sequence[str], cache_dir: Path,
) -> None:  # fmt: skip
    """When the local files are missing: if `download`, the Hub copy saved under out_dir; else (or
    offline) FileNotFoundError naming what is expected where and how to get it."""
    if not download:
        raise FileNotFoundError(f"{dataset} not found: expected {expected}")
    try:
        download_from_hub(name, out_dir, splits, cache_dir)
    except Exception as e:  # offline: ConnectionError, or whatever the Hub client raises
        raise FileNotFoundError(
            f"{dataset} not found and datasets.load_dataset({name!r}) failed "
            f"({type(e).__name__}: {e}): expected {expected}"
        ) from e


def download_from_hub(name: str, out_dir: Path, splits: Sequence[str], cache_dir: Path) -> None:
    """`datasets.load_dataset(name)` (needs a network the first time), saved as
    out_dir/{split}.parquet so that every later run reads local files."""
    log.info("trying datasets.load_dataset(%r) (cache: %s)", name, cache_dir)
    dataset = datasets.load_dataset(name, cache_dir=str(cache_dir))
    for split in splits:
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            dataset[split].to_parquet(str(tmp))
