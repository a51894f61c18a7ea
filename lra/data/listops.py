"""ListOps (Nangia & Bowman 2018) as LRA generates and reads it.

Generator (semantics of LRA's `lra_benchmarks/data/listops.py`, our own code): a node is a leaf
digit with probability 0.75 (always at max depth), else an operator in {MIN, MAX, MED, SM} with
2..max_args arguments. `length` counts operators, closing brackets and digits; trees with
min_length < length < max_length are kept, deduplicated, and split train/val/test. The source
string nests every partial application in parentheses, as LRA's `to_string` does:

    [MAX 2 9 ]  ->  ( ( ( [MAX 2 ) 9 ) ] )

Reader: parentheses are dropped; tokens are the 10 digits, the 4 operators and `]` (LRA's first
tokenizer dropped `]` and made the task unsolvable; we keep it as its own token).
`brackets: false` drops `]` too, as lra-igloo's tokenizer (tfds' alphanumeric Tokenizer) did: the
digits and operators keep their ids, and id 15 is never used (it is the OOV id of lra-igloo's
16-token vocabulary).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lra.data.base import LRADataModule
from lra.io import sha256, write_json
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


GENERATOR = "lra.data.listops"
FILES = tuple(f"basic_{split}.tsv" for split in SPLITS)


def own_manifest(folder: Path) -> dict[str, Any] | None:
    """The MANIFEST.json this generator wrote in `folder`, or None (absent, unreadable, another's)."""
    try:
        manifest = json.loads((folder / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def is_complete(folder: Path) -> bool:
    """A generated set whose files are all there, each of the size its manifest gives."""
    manifest = own_manifest(folder)
    return manifest is not None and all(
        (folder / name).is_file()
        and (folder / name).stat().st_size == manifest.get(name, {}).get("bytes")
        for name in FILES
    )


def write_listops(
    out_dir: str | Path, spec: ListOpsSpec, seed: int, force: bool = False
) -> dict[str, Any]:
    """Write basic_{train,val,test}.tsv and MANIFEST.json into out_dir; nothing else is touched.

    The files are written in a temporary sibling, then moved in one by one, the manifest last. A
    folder that holds files but no manifest of this generator is not ours: refused unless `force`
    (and even then only these four names are written). A move cut short leaves a manifest whose
    sizes do not match (or none, on a first write), so `is_complete` is false and the set is made
    again."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and own_manifest(out_dir) is None and not force:
        present = sorted(p.name for p in out_dir.iterdir())
        raise FileExistsError(
            f"{out_dir} holds files this generator did not write ({', '.join(present[:3])}"
            f"{', ...' if len(present) > 3 else ''}): choose another --out (or "
            "task.data.generated_dir), or --force to write its four files beside them"
        )
    t0 = time.time()
    splits = generate_examples(spec, seed)
    manifest: dict[str, Any] = {"generator": GENERATOR, "seed": seed, **asdict(spec)}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for split, rows in splits.items():
            path = tmp / f"basic_{split}.tsv"
            with open(path, "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["Source", "Target"])
                writer.writerows(rows)
            manifest[path.name] = {
                "rows": len(rows), "bytes": path.stat().st_size, "sha256": sha256(path)
            }  # fmt: skip
        manifest["seconds"] = round(time.time() - t0, 1)
        write_json(tmp / "MANIFEST.json", manifest)
        # first a manifest without sizes: the folder is ours, and incomplete, until the last move
        write_json(out_dir / "MANIFEST.json", {"generator": GENERATOR, "complete": False})
        for name in (*FILES, "MANIFEST.json"):
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def tokenize(source: str, brackets: bool = True) -> list[int]:
    """Bracketed source -> token ids (parentheses dropped; with brackets false `]` too). Raises
    KeyError on unknown tokens."""
    dropped = ("(", ")") if brackets else ("(", ")", END)
    return [VOCAB[tok] for tok in source.split() if tok not in dropped]


def read_tsv(path: Path, brackets: bool = True) -> Iterator[tuple[list[int], int]]:
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
                ids = tokenize(row[0], brackets)
                value = float(row[1])  # LRA's files write labels as "9" (its reader: float, int)
            except KeyError as e:
                raise ValueError(f"{path}:{line}: unknown ListOps token {e.args[0]!r}") from None
            except ValueError:
                raise ValueError(f"{path}:{line}: label {row[1]!r} is not a number") from None
            if not (value.is_integer() and 0 <= value < 10):  # 3.7, inf, nan, 12
                raise ValueError(f"{path}:{line}: label {row[1]!r} is not a whole number in 0..9")
            yield ids, int(value)


@TASKS.register("listops")
class ListOpsDataModule(LRADataModule):
    """Reads the official release (`dir`, never written) when it is there, else a set this
    harness generated (`generated_dir`, made there when missing and `generate` is on)."""

    vocab_size = len(VOCAB) + 1
    num_classes = 10

    def __init__(
        self,
        dir: str | None,
        generated_dir: str | None = None,
        generate: bool = True,
        seed: int = 0,
        generator: dict[str, int] | None = None,
        brackets: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.brackets = brackets  # false: `]` dropped too (lra-igloo's tokenizer)
        if not dir and not generated_dir:
            raise ValueError("ListOps needs task.data.dir (the release) or task.data.generated_dir")
        self.release = Path(dir) if dir else None
        self.generated = Path(generated_dir) if generated_dir else None
        self.generate = generate
        self.gen_seed = seed
        self.spec = ListOpsSpec(**(generator or {}))

    @property
    def dir(self) -> Path:
        """The folder the splits are read from: the release when any of its files is there (a
        partial one is an error in `fetch_raw`), else the generated set."""
        if self.release is not None and any((self.release / n).exists() for n in FILES):
            return self.release
        return self.generated or self.release

    def raw_files(self) -> dict[str, Path]:
        return {split: self.dir / f"basic_{split}.tsv" for split in SPLITS}

    def looked_in(self) -> str:
        """Every place searched, and a copy of the release found where it is not read from."""
        places = [f"{p}/" for p in (self.release, self.generated) if p is not None]
        text = "looked in " + " and ".join(places)
        if self.release is not None:
            stray = self.release.parent.parent / self.release.name  # data/listops-1000
            if stray != self.release and (stray / FILES[0]).exists():
                text += (
                    f"; found {stray}/, which is not where the release is read from: move it to "
                    f"{self.release}/ or set task.data.dir={stray}"
                )
        return text

    def fetch_raw(self) -> None:
        if self.release is not None:
            missing = [n for n in FILES if not (self.release / n).exists()]
            if len(missing) < len(FILES):  # the release is there, whole or not
                if not missing and own_manifest(self.release) is not None:
                    log.warning(
                        "ListOps: %s holds a set this harness generated (its MANIFEST.json), not "
                        "LRA's release: it is used and recorded as generated; move it to %s",
                        self.release, self.generated,
                    )  # fmt: skip
                if missing:
                    raise FileNotFoundError(
                        f"{self.release / missing[0]} not found, but {self.release} holds other "
                        "ListOps files: a partial release. Unpack lra_release.gz again, or point "
                        "task.data.dir at a complete listops-1000 folder"
                    )
                return
        if self.generated is not None and is_complete(self.generated):
            made = {k: v for k, v in (own_manifest(self.generated) or {}).items() if k in asdict(self.spec) or k == "seed"}
            asked = {**asdict(self.spec), "seed": self.gen_seed}
            if made != asked:  # ours, so it could be remade; but it is data a run may rely on
                log.warning(
                    "ListOps: the generated set in %s was made with %s, not the configured %s: "
                    "it is used as it is; remove it (or point task.data.generated_dir elsewhere) "
                    "to generate the configured one", self.generated, made, asked,
                )  # fmt: skip
            return
        if not self.generate or self.generated is None:
            first = (self.release or self.generated) / FILES[0]
            raise FileNotFoundError(
                f"{first} not found ({self.looked_in()}): run 'python -m lra.data.prepare "
                f"{self.task_name}', set task.data.generate=true, or point paths.lra_dir at your "
                "LRA release"
            )
        why = "no release found" if self.release is not None else "no complete generated set"
        log.warning(
            "ListOps: %s (%s); generating %d trees into %s, the harness's own data, not LRA's "
            "files (results.json records the source)", why, self.looked_in(),
            self.spec.num_train + self.spec.num_val + self.spec.num_test, self.generated,
        )  # fmt: skip
        manifest = self.generate_files()
        log.info("generated ListOps in %.1f s", manifest["seconds"])

    def generate_files(self, force: bool = False) -> dict[str, Any]:
        if self.generated is None:
            raise ValueError("task.data.generated_dir is null: there is nowhere to generate into")
        return write_listops(self.generated, self.spec, self.gen_seed, force=force)

    def source(self) -> dict[str, Any]:
        folder = self.dir
        manifest = own_manifest(folder)
        if folder == self.release and manifest is None:
            return {"kind": "release", "dir": str(self.release)}
        manifest = manifest or {}
        checksums = {name: manifest.get(name, {}).get("sha256") for name in FILES}
        return {"kind": "generated", "dir": str(folder), "seed": manifest.get("seed"),
                "sha256": checksums}  # fmt: skip

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        rows, cut, longest = 0, 0, 0
        for ids, label in read_tsv(self.raw_files()[split], self.brackets):
            rows, cut, longest = rows + 1, cut + (len(ids) > self.max_len), max(longest, len(ids))
            yield np.asarray(ids[: self.max_len], dtype=np.int16), label
        if cut:
            log.warning(
                "ListOps %s: %d of %d rows are longer than task.max_len=%d (the longest has %d "
                "tokens) and were cut to their first %d", split, cut, rows, self.max_len, longest,
                self.max_len,
            )  # fmt: skip

    def cache_params(self) -> dict[str, Any]:
        # the key of a bracketed cache as before this option, so existing caches stay valid
        dropped = {} if self.brackets else {"brackets": False}
        return {"reader": "listops-v1", "max_len": self.max_len, **dropped}
