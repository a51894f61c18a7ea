"""Pathfinder (32x32) and Path-X (128x128): are the two dots joined by one dashed path?

Layout (the LRA release, as `lra_benchmarks/data/pathfinder.py` reads it):

    {dir}/pathfinder{32,128}/{curv_baseline,curv_contour_length_9,curv_contour_length_14}/
        metadata/{0..199}.npy    plain text despite the extension: one line per image,
                                 space-separated; [0] image folder `imgs/k`, [1] file
                                 `sample_i.png`, [3] label
        imgs/{k}/sample_{i}.png  8-bit grey

Difficulty easy / intermediate / hard = those three folders; LRA uses hard for both tasks.
Splits: the metadata rows in order (files 0, 1, ... numerically), 80% / 10% / 10%, as LRA's
`hard[:80%]`, `hard[80%:90%]`, `hard[90%:]` (tfds shuffled the rows first; we keep the files'
order). Empty or unreadable PNGs (the release has `pathfinder32/curv_baseline/imgs/0/
sample_172.png`, empty) are skipped and counted in a warning, as LRA filtered empty images.
Tokens: the intensities row-major + pixel_offset (default 1: unlike LRA, no pixel is padding).

Missing data is an error unless `generate: true`, which writes `generator.n` images with our
own generator (lra/data/snakes.py) in the same layout, marked by a MANIFEST.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lra.data.base import PIXEL_VOCAB, LRADataModule, pixel_tokens, pixels_pad, warn_if_cropped
from lra.data.snakes import DIFFICULTIES, SnakesSpec, generate
from lra.registry import TASKS

log = logging.getLogger(__name__)


def numeric_order(path: Path) -> tuple[bool, int, str]:
    return (not path.stem.isdigit(), int(path.stem) if path.stem.isdigit() else 0, path.stem)


def metadata_files(folder: Path) -> list[Path]:
    """metadata/*.npy in numeric order (0, 1, 2, ..., 199), or FileNotFoundError saying how."""
    meta = folder / "metadata"
    if not meta.is_dir():
        raise FileNotFoundError(
            f"{meta} not found: unpack the LRA release there (tar xzf lra_release.gz -C data/), "
            "point task.data.dir at the folder holding pathfinder32/ or pathfinder128/, or "
            "generate a set: python -m lra.data.prepare pathfinder --resolution R --difficulty D "
            "[--n N] (or task.data.generate=true)"
        )
    files = sorted(meta.glob("*.npy"), key=numeric_order)
    if not files:
        raise FileNotFoundError(f"{meta} holds no metadata files (*.npy)")
    return files


def read_metadata(folder: Path) -> list[tuple[Path, int]]:
    """(image path, label) for every metadata line, in order."""
    rows = []
    for path in metadata_files(folder):
        raw = path.read_bytes()
        if raw.startswith(b"\x93NUMPY"):
            raise ValueError(f"{path} is a binary NumPy file; the release's metadata is plain text")
        for line_no, line in enumerate(raw.decode("utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            fields = line.split(" ")
            if len(fields) < 4:
                raise ValueError(
                    f"{path}:{line_no}: expected at least 4 space-separated fields "
                    f"(folder file index label ...), got {len(fields)}"
                )
            try:
                label = int(fields[3])
            except ValueError:
                raise ValueError(
                    f"{path}:{line_no}: label {fields[3]!r} is not an integer"
                ) from None
            if label not in (0, 1):
                raise ValueError(f"{path}:{line_no}: label {label} is not 0 or 1")
            rows.append((folder / fields[0] / fields[1], label))
    return rows


def read_png(path: Path, resolution: int) -> np.ndarray | None:
    """[resolution, resolution] uint8, or None if the file is missing, empty or unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        return None
    if image.mode != "L" or image.size != (resolution, resolution):
        raise ValueError(
            f"{path}: expected an 8-bit grey {resolution}x{resolution} PNG, got mode {image.mode} "
            f"{image.size[0]}x{image.size[1]}; is task.data.resolution right?"
        )
    return np.asarray(image)


def split_rows(rows: list, split: str) -> list:
    n = len(rows)
    bounds = {
        "train": (0, n * 8 // 10),
        "val": (n * 8 // 10, n * 9 // 10),
        "test": (n * 9 // 10, n),
    }
    lo, hi = bounds[split]
    return rows[lo:hi]


@TASKS.register("pathfinder")
class PathfinderDataModule(LRADataModule):
    vocab_size = PIXEL_VOCAB
    pads = staticmethod(pixels_pad)
    num_classes = 2

    def __init__(
        self,
        dir: str,
        resolution: int = 32,
        difficulty: str = "hard",
        pixel_offset: int = 1,
        generate: bool = False,
        seed: int = 0,
        generator: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if difficulty not in DIFFICULTIES:
            raise ValueError(
                f"task.data.difficulty must be one of {', '.join(DIFFICULTIES)}, not '{difficulty}'"
            )
        if pixel_offset not in (0, 1):
            raise ValueError(f"task.data.pixel_offset must be 0 (LRA) or 1, not {pixel_offset}")
        self.dir = Path(dir)
        self.resolution = resolution
        self.difficulty = difficulty
        self.pixel_offset = pixel_offset
        self.generate = generate
        self.gen_seed = seed
        gen = dict(generator or {})
        self.gen_n = gen.pop("n", 200_000)
        self.gen_workers = gen.pop("workers", 1)
        self.gen_batch_size = gen.pop("batch_size", 1000)
        if "margins" in gen:
            gen["margins"] = tuple(gen["margins"])
        folder, contour_length = DIFFICULTIES[difficulty]
        self.folder = self.dir / f"pathfinder{resolution}" / folder
        self.spec = SnakesSpec(resolution=resolution, contour_length=contour_length, **gen)
        self.skipped: dict[str, int] = {}  # images skipped per split, when last read
        warn_if_cropped(self.max_len, resolution * resolution)

    def raw_files(self) -> dict[str, list[Path]]:
        files = metadata_files(self.folder)  # every split depends on every metadata file
        return {split: files for split in ("train", "val", "test")}

    def input_files(self, split: str) -> list[Path]:
        """The metadata files and every image they name: a restored or replaced PNG is new data."""
        images = sorted({path for path, _ in read_metadata(self.folder)})
        return [*self.raw_files()[split], *(p for p in images if p.exists())]

    def fetch_raw(self) -> None:
        manifest = self.folder / "MANIFEST.json"
        unfinished = manifest.exists() and not json.loads(manifest.read_text()).get("complete")
        if self.generate and (unfinished or not (self.folder / "metadata").is_dir()):
            log.warning(
                "%s missing or unfinished: generating %d images with lra.data.snakes (seed %d); "
                "this is not the LRA release", self.folder, self.gen_n, self.gen_seed,
            )  # fmt: skip
            self.generate_files()
        elif unfinished:
            log.warning("%s: an unfinished generated set (see %s)", self.folder, manifest)
        metadata_files(self.folder)

    def generate_files(self) -> dict[str, Any]:
        return generate(
            self.folder, self.spec, self.gen_n, self.gen_seed, self.gen_workers, self.gen_batch_size
        )

    def read_split(self, split: str) -> Iterator[tuple[np.ndarray, int]]:
        rows = split_rows(read_metadata(self.folder), split)
        skipped = []
        for path, label in rows:
            pixels = read_png(path, self.resolution)
            if pixels is None:
                skipped.append(path)
                continue
            yield pixel_tokens(pixels, self.pixel_offset, self.max_len), label
        if skipped:
            log.warning(
                "%s %s: skipped %d of %d images, empty or unreadable (first: %s)",
                self.task_name, split, len(skipped), len(rows), skipped[0],
            )  # fmt: skip
        self.skipped[split] = len(skipped)

    def cache_params(self) -> dict[str, Any]:
        return {"reader": "pathfinder-v1", "max_len": self.max_len, "offset": self.pixel_offset}
