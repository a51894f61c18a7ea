"""ListOps (Nangia & Bowman 2018) as LRA generates and reads it.

Generator (semantics of LRA's `lra_benchmarks/data/listops.py`, our own code): a node is a leaf
digit with probability 0.75 (always at max depth), else an operator in {MIN, MAX, MED, SM} with
2..max_args arguments. `length` counts operators, closing brackets and digits; trees with
min_length < length < max_length are kept, deduplicated, and split train/val/test. The source
string nests every partial application in parentheses, as LRA's `to_string` does:

    [MAX 2 9 ]  ->  ( ( ( [MAX 2 ) 9 ) ] )

Reader: parentheses are dropped; tokens are the 10 digits, the 4 operators and `]` (LRA's first
tokenizer dropped `]` and made the task unsolvable; we keep it as its own token).
"""

from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.base import LRADataModule
from lra.io import atomic_path, sha256, write_json
from lra.registry import TASKS

log = logging.getLogger(__name__)

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
# 0 is padding; digits 1..10, operators 11..14, END 15.
VOCAB = {tok: i + 1 for i, tok in enumerate(DIGITS + OPERATORS + (END,))}
SPLITS = ("train", "val", "test")
LEAF_P = 0.75


@dataclass(frozen=True)
class ListOpsSpec:
    """Generator settings; LRA's defaults make `listops-1000`."""

    max_depth: int = 10
    max_args: int = 10
    min_length: int = 500
    max_length: int = 2000
    num_train: int = 96_000
    num_val: int = 2_000
    num_test: int = 2_000


def apply_op(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        mid = len(s) // 2
        # int(np.median(.)) as LRA: the mean of the middle two, truncated.
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}")


class _TooLong(Exception):
    pass


def _grow(rng: random.Random, depth: int, spec: ListOpsSpec, out: list[str], n: list[int]) -> int:
    """Append one subtree's source tokens to `out`, count its length in n[0], return its value."""
    r = rng.random() if depth < spec.max_depth else 1.0
    if r > 1.0 - LEAF_P:
        value = rng.randrange(10)
        out.append(DIGITS[value])
        n[0] += 1
        if n[0] >= spec.max_length:
            raise _TooLong
        return value
    num_args = rng.randint(2, spec.max_args)
    op = OPERATORS[rng.randrange(4)]
    # "( " once per partial application plus one for the closing bracket.
    out.extend(["("] * (num_args + 1))
    out.append(op)
    n[0] += 2
    args = []
    for _ in range(num_args):
        args.append(_grow(rng, depth + 1, spec, out, n))
        out.append(")")
    out.append(END)
    out.append(")")
    if n[0] >= spec.max_length:
        raise _TooLong
    return apply_op(op, args)


def sample_tree(rng: random.Random, spec: ListOpsSpec) -> tuple[str, int, int] | None:
    """One tree as (source, value, length), or None if its length is out of bounds."""
    out: list[str] = []
    n = [0]
    try:
        value = _grow(rng, 1, spec, out, n)
    except _TooLong:
        return None
    if not spec.min_length < n[0] < spec.max_length:
        return None
    return " ".join(out), value, n[0]


def generate_examples(spec: ListOpsSpec, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Unique trees in generation order, split train/val/test; deterministic in `seed`."""
    rng = random.Random(seed)
    sizes = {"train": spec.num_train, "val": spec.num_val, "test": spec.num_test}
    total = sum(sizes.values())
    seen: dict[str, int] = {}
    while len(seen) < total:
        tree = sample_tree(rng, spec)
        if tree is not None and tree[0] not in seen:
            seen[tree[0]] = tree[1]
    rows = list(seen.items())
    out, start = {}, 0
    for split in SPLITS:
        out[split] = rows[start : start + sizes[split]]
        start += sizes[split]
    return out


def write_listops(out_dir: str | Path, spec: ListOpsSpec, seed: int) -> dict[str, Any]:
    """Write basic_{train,val,test}.tsv and MANIFEST.json into out_dir, atomically as a whole."""
    out_dir = Path(out_dir)
    t0 = time.time()
    splits = generate_examples(spec, seed)
    manifest: dict[str, Any] = {"generator": "lra.data.listops", "seed": seed, **asdict(spec)}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, rows in splits.items():
            path = tmp / f"basic_{split}.tsv"
            with open(path, "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["Source", "Target"])
                writer.writerows(rows)
            manifest[f"basic_{split}.tsv"] = {"rows": len(rows), "sha256": sha256(path)}
        manifest["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / "MANIFEST.json", manifest)
    return manifest


def tokenize(source: str) -> list[int]:
    """Bracketed source -> token ids (parentheses dropped). Raises KeyError on unknown tokens."""
    return [VOCAB[tok] for tok in source.split() if tok not in ("(", ")")]


def read_tsv(path: Path) -> Iterator[tuple[list[int], int]]:
    """Rows of an official `basic_*.tsv` (header `Source<TAB>Target`) as (token ids, label)."""
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header != ["Source", "Target"]:
            raise ValueError(f"{path}:1: expected the header 'Source<TAB>Target', got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise ValueError(f"{path}:{line}: expected 2 tab-separated columns, got {len(row)}")
            try:
                ids = tokenize(row[0])
                label = int(float(row[1]))
            except KeyError as e:
                raise ValueError(f"{path}:{line}: unknown ListOps token {e.args[0]!r}") from None
            except ValueError:
                raise ValueError(f"{path}:{line}: label {row[1]!r} is not a number") from None
            if not 0 <= label < 10:
                raise ValueError(f"{path}:{line}: label {label} is outside 0..9")
            yield ids, label


@TASKS.register("listops")
class ListOpsDataModule(LRADataModule):
    vocab_size = len(VOCAB) + 1
    num_classes = 10

    def __init__(
        self,
        dir: str,
        generate: bool = True,
        seed: int = 0,
        generator: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dir = Path(dir)
        self.generate = generate
        self.gen_seed = seed
        self.spec = ListOpsSpec(**(generator or {}))

    def raw_files(self) -> dict[str, Path]:
        return {split: self.dir / f"basic_{split}.tsv" for split in SPLITS}

    def fetch_raw(self) -> None:
        missing = [p for p in self.raw_files().values() if not p.exists()]
        if not missing:
            return
        if not self.generate:
            raise FileNotFoundError(
                f"{missing[0]} not found: run 'python -m lra.data.prepare {self.task_name} "
                f"--out {self.dir}', set task.data.generate=true, or point paths.lra_dir at "
                "your LRA release"
            )
        log.info("ListOps files missing in %s: generating them (seed %d)", self.dir, self.gen_seed)
        manifest = self.generate_files()
        log.info("generated ListOps in %.1f s", manifest["seconds"])

    def generate_files(self) -> dict[str, Any]:
        return write_listops(self.dir, self.spec, self.gen_seed)

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        for ids, label in read_tsv(self.raw_files()[split]):
            yield np.asarray(ids[: self.max_len], dtype=np.int16), label

    def cache_params(self) -> dict[str, Any]:
        return {"reader": "listops-v1", "max_len": self.max_len}
