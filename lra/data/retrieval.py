"""Retrieval (AAN, Radev et al. 2013): do two papers cite one another? As LRA reads it.

Files (`lra_release/tsv_data/`): `new_aan_pairs.{train,eval,test}.tsv`, 147,086 / 18,090 /
17,437 rows in the release; no header; five tab-separated columns `label id1 id2 text1 text2`,
no quoting (LRA's `make_csv_dataset(..., use_quote_delim=False)`). The label is parsed as a
float and truncated to an int, as LRA's `tf.cast(float32 -> int32)`.

Tokens: each text cut to its first 10,000 bytes (LRA slices the raw bytes, `s.numpy()[:10000]`,
which the paper calls characters), then UTF-8 bytes + 1 (vocab 257, 0 = padding), at most
max_len (4000) per document. The model encodes the two documents with one shared encoder
(two towers; `head: dual` in lra/models/classifier.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.base import BYTE_VOCAB, LRADataModule, byte_tokens
from lra.registry import TASKS

FILES = {
    "train": "new_aan_pairs.train.tsv",
    "val": "new_aan_pairs.eval.tsv",
    "test": "new_aan_pairs.test.tsv",
}
COLUMNS = ("label", "id1", "id2", "text1", "text2")


def read_pairs(path: Path, doc_bytes: int, max_len: int) -> Iterator[tuple[tuple, int]]:
    """Rows of an AAN pairs file as ((tokens of text1, tokens of text2), label)."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            fields = line.split(b"\t")
            if len(fields) != len(COLUMNS):
                raise ValueError(
                    f"{path}:{line_no}: expected 5 tab-separated columns "
                    f"({' '.join(COLUMNS)}), got {len(fields)}"
                )
            try:
                label = int(float(fields[0]))
            except ValueError:
                raise ValueError(
                    f"{path}:{line_no}: label {fields[0].decode(errors='replace')!r} "
                    "is not a number"
                ) from None
            if label not in (0, 1):
                raise ValueError(f"{path}:{line_no}: label {label} is not 0 or 1")
            doc1 = byte_tokens(fields[3][:doc_bytes], max_len)
            doc2 = byte_tokens(fields[4][:doc_bytes], max_len)
            yield (doc1, doc2), label


@TASKS.register("retrieval")
class RetrievalDataModule(LRADataModule):
    vocab_size = BYTE_VOCAB
    num_classes = 2
    inputs = ("input_ids_1", "input_ids_2")

    def __init__(self, dir: str, doc_bytes: int = 10_000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dir = Path(dir)
        self.doc_bytes = doc_bytes

    def raw_files(self) -> dict[str, Path]:
        return {split: self.dir / name for split, name in FILES.items()}

    def fetch_raw(self) -> None:
        for path in self.raw_files().values():
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} not found: AAN is in the LRA release; unpack it with "
                    "'tar xzf lra_release.gz -C data/' (it holds lra_release/tsv_data/), point "
                    "paths.lra_dir at your lra_release folder, or task.data.dir at tsv_data/"
                )

    def read_split(self, split: str) -> Iterator[tuple[tuple[np.ndarray, np.ndarray], int]]:
        yield from read_pairs(self.raw_files()[split], self.doc_bytes, self.max_len)

    def cache_params(self) -> dict[str, Any]:
        return {"reader": "aan-v1", "max_len": self.max_len, "doc_bytes": self.doc_bytes}
