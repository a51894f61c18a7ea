"""Tiny datasets written in the official layouts, byte for byte as the releases hold them: a few
rows of each task, for the tests and for `python -m lra.gpucheck`'s runs of the real CLI.

Each writer follows the format LRA's own input pipeline reads (google-research/long-range-arena,
`lra_benchmarks/*/input_pipeline.py`, `lra_benchmarks/data/pathfinder.py`), not our reader, so a
reader is tested against the release's layout rather than against itself. No DataModule lives here
(nothing registers); `write_all_tasks(data_dir)` puts every task's rows where its config looks.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from lra.data.listops import ListOpsSpec
from lra.data.listops import write_listops as generate_listops


def write_listops(folder: Path, rows: list[tuple[str, int]]) -> None:
    """basic_{train,val,test}.tsv: header `Source<TAB>Target`, the same rows in each split."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{source}\t{label}\n" for source, label in rows)
    for split in ("train", "val", "test"):
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + body)


def write_aclimdb(root: Path, reviews: dict[str, dict[str, list[str]]]) -> None:
    """aclImdb/{split}/{pos,neg}/{id}_{rating}.txt, UTF-8, no trailing newline (as released)."""
    for split, by_label in reviews.items():
        for label, texts in by_label.items():
            folder = root / "aclImdb" / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, text in enumerate(texts):
                rating = 8 if label == "pos" else 2
                (folder / f"{i}_{rating}.txt").write_bytes(text.encode("utf-8"))


def write_aan(folder: Path, rows: dict[str, list[tuple[str, str, str, str, str]]]) -> None:
    """new_aan_pairs.{train,eval,test}.tsv: no header, `label id1 id2 text1 text2`, tabs."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        text = "".join("\t".join(fields) + "\n" for fields in lines)
        (folder / f"new_aan_pairs.{split}.tsv").write_bytes(text.encode("utf-8"))


def write_cifar_python(
    root: Path, rgb: dict[str, np.ndarray], labels: dict[str, list[int]]
) -> None:
    """cifar-10-batches-py/data_batch_1..5 and test_batch: pickled dicts with bytes keys,
    b'data' [N, 3072] uint8 (R plane, G plane, B plane, each 32x32 row-major), b'labels'."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = np.array_split(np.arange(len(labels["train"])), 5)
    parts = {f"data_batch_{i + 1}": ("train", idx) for i, idx in enumerate(train)}
    parts["test_batch"] = ("test", np.arange(len(labels["test"])))
    for name, (split, idx) in parts.items():
        data = rgb[split][idx].transpose(0, 3, 1, 2).reshape(len(idx), 3072)  # [N, 3, 32, 32]
        batch = {
            b"batch_label": name.encode(),
            b"labels": [labels[split][i] for i in idx],
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in idx],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def write_pathfinder(
    folder: Path, images: list[np.ndarray], labels: list[int], per_file: int
) -> None:
    """metadata/{k}.npy (plain text, space-separated, one line per image, as the release) and
    imgs/{k}/sample_{i}.png (8-bit grey)."""
    for k, start in enumerate(range(0, len(images), per_file)):
        (folder / "imgs" / str(k)).mkdir(parents=True, exist_ok=True)
        (folder / "metadata").mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (image, label) in enumerate(
            zip(images[start : start + per_file], labels[start : start + per_file], strict=True)
        ):
            Image.fromarray(image).save(folder / "imgs" / str(k) / f"sample_{i}.png")
            lines.append(f"imgs/{k} sample_{i}.png {i} {label} 1.0 14 4 2 0.5 1 1\n")
        (folder / "metadata" / f"{k}.npy").write_text("".join(lines))


def random_images(n: int, side: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side), dtype=np.uint8) for _ in range(n)]


def write_all_tasks(data_dir: Path) -> None:
    """A few rows of every task, where each task's config looks under paths.data_dir."""
    lra = data_dir / "lra_release"
    trees = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( [MIN 4 ) 1 ] )", 1)] * 4
    write_listops(lra / "listops-1000", trees)
    small = ListOpsSpec(max_depth=4, max_args=5, min_length=10, max_length=200, num_train=8,
                        num_val=4, num_test=4)  # fmt: skip
    generate_listops(data_dir / "listops_small", small, seed=0)  # rather than 22,000 trees
    write_aclimdb(
        data_dir,
        {
            split: {
                "pos": ["A fine film.", "Loved it ✓"] * 2,
                "neg": ["Dull.", "Awful <br /> plot"] * 2,
            }
            for split in ("train", "test")
        },
    )
    pair = ("1.0", "a", "b", "first paper text", "second paper text")
    other = ("0", "c", "d", "an abstract", "another abstract")
    write_aan(lra / "tsv_data", {split: [pair, other] * 4 for split in ("train", "eval", "test")})
    rng = np.random.default_rng(0)
    write_cifar_python(
        data_dir,
        {
            s: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            for s, n in (("train", 20), ("test", 8))
        },
        {"train": [i % 10 for i in range(20)], "test": [i % 10 for i in range(8)]},
    )
    labels = [i % 2 for i in range(20)]
    write_pathfinder(
        lra / "pathfinder32" / "curv_contour_length_14", random_images(20, 32), labels, 10
    )
    write_pathfinder(
        lra / "lra_release" / "pathfinder128" / "curv_contour_length_14",
        random_images(20, 128),
        labels,
        10,
    )
