"""Pathfinder "snakes" stimuli (Linsley et al. 2018; Kim et al. 2020), in LRA's release layout.

Our own implementation of the generator LRA used (github.com/drewlinsley/pathfinder, with the
settings in LRA's `lra_benchmarks/data/pathfinder.py`). An image is built from paddles: short
dashes of length L and thickness t. A snake is a chain of paddles; its state is a pivot p (the
middle of the gap after its last paddle) and a direction θ. The next paddle turns by δ:

    u = (sin(θ+δ), cos(θ+δ))  (y, x)        paddle = [p + m·u, p + (m+L)·u]        p += (L+2m)·u

so paddles are 2m apart (m: the margin), and δ is drawn, on a grid of one pixel of arc, with
weight cos²(min(c·|δ|, π/2)) (c: continuity; c = 1 allows turns up to 90°, c = 1.8 up to 50°).
A paddle keeps m clear (edge to edge) of every paddle but its predecessor and out of the
padding border; a drawn turn that breaks this is struck out and another drawn, and a snake
with no turn left is a dead end (the original drew three times, then gave up).

One image: two target snakes of `contour_length` paddles whose first paddles start
`seed_distance` apart near the centre, grown in turns; then distractor snakes of
contour_length // 3 paddles seeded anywhere free. Two discs of `marker_radius` mark the start
of one target snake and the end of the same snake (label 1) or of the other (label 0). Paddles
and discs are drawn at `antialias`x and downsampled with Lanczos; paddles are scaled by
paddle_contrast·snake_contrast, discs are 1, and the image is stretched to 0..255 (as
scipy.misc.imsave did) and written as an 8-bit grey PNG.

Layout (the release's): folder/imgs/{b}/sample_{i}.png and folder/metadata/{b}.npy, a plain-text
file despite its name with one line per image:

    imgs/{b} sample_{i}.png {i} {label} {continuity} {contour_length} {distractor_length}
    {paddle_length} {thickness} {margin} 1

Batches are independent (a seed per batch), so generation is parallel over workers,
deterministic whatever the worker count, and resumable: a batch is done when its metadata file
exists, and a killed run redoes only its unfinished batches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lra.io import atomic_path, write_json

log = logging.getLogger(__name__)

# difficulty -> (release folder, paddles per target snake)
DIFFICULTIES = {
    "easy": ("curv_baseline", 6),
    "intermediate": ("curv_contour_length_9", 9),
    "hard": ("curv_contour_length_14", 14),
}
Footprint = tuple[tuple[slice, slice], np.ndarray]  # (window of the fine grid, mask in it)
MAX_PAIR_TRIES = 10_000  # LRA's generator retried forever; hard 128x128 needs ~50 on average


@dataclass(frozen=True)
class SnakesSpec:
    """Generator settings; the defaults are LRA's 32x32 ones (pathfinder.py's Pathfinder32)."""

    resolution: int = 32
    contour_length: int = 14
    padding: int = 1
    paddle_length: float = 2.0
    thickness: float = 0.5
    margins: tuple[int, ...] = (1,)  # one drawn per image
    marker_radius: float = 1.5
    seed_distance: float = 7.0
    continuity: float = 1.0
    distractor_budget: int = 20  # distractors = budget // distractor_length (Python 2's `/`)
    paddle_contrast: float = 0.75
    snake_contrast: float = 2.0
    antialias: int = 2
    distractor_tries: int = 5  # seeds tried per distractor snake

    def __post_init__(self) -> None:
        if self.thickness * self.antialias != round(self.thickness * self.antialias):
            raise ValueError(
                f"thickness {self.thickness} x antialias {self.antialias} must be a whole number "
                "of pixels"
            )
        if self.contour_length < 3:
            raise ValueError(f"contour_length must be at least 3, not {self.contour_length}")

    @property
    def distractor_length(self) -> int:
        return self.contour_length // 3

    @property
    def num_distractors(self) -> int:
        return self.distractor_budget // self.distractor_length


@dataclass
class Snake:
    pivot: np.ndarray  # (y, x): the middle of the gap after the last paddle
    theta: float  # direction of the last paddle (radians, y down)
    paddles: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (start, end)
    footprints: list[Footprint] = field(default_factory=list)


def direction(theta: float | np.ndarray) -> np.ndarray:
    if isinstance(theta, float):
        return np.array([math.sin(theta), math.cos(theta)])  # (y, x)
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)


class Sketch:
    """The geometry of one image: placed snakes and which pixels they take."""

    def __init__(self, spec: SnakesSpec, rng: np.random.Generator, margin: int) -> None:
        self.spec, self.rng, self.m = spec, rng, margin
        self.aa = spec.antialias
        size = spec.resolution * self.aa
        # taken[i, j]: how many paddle footprints cover fine pixel (i, j); the border counts.
        self.taken = np.zeros((size, size), dtype=np.int16)
        border = spec.padding * self.aa
        if border:
            self.taken[:border] = self.taken[-border:] = 1
            self.taken[:, :border] = self.taken[:, -border:] = 1
        self.centres = (np.arange(size) + 0.5) / self.aa  # fine pixel centres, image units
        # Paddles other than neighbours keep m apart, edge to edge: footprints of radius (t + m)/2.
        self.radius = (spec.thickness + margin) / 2
        self.reach = spec.paddle_length + margin  # radius of the circle the next paddle ends on
        half = math.floor(math.pi * self.reach)
        delta = np.arange(-half, half + 1) / self.reach  # turns one pixel of arc apart, 0 included
        weight = np.cos(np.minimum(np.abs(delta) * spec.continuity, math.pi / 2)) ** 2
        keep = weight > 1e-9
        self.turns, self.turn_weights = delta[keep], weight[keep]

    # --- occupancy ---------------------------------------------------------------------------
    def footprint(self, a: np.ndarray, b: np.ndarray) -> Footprint:
        """Fine pixels whose centres lie within (t + m)/2 of the segment a-b (image units)."""
        r, aa, size = self.radius, self.aa, self.taken.shape[0]
        (ay, ax), (by, bx) = a.tolist(), b.tolist()
        y0, y1 = (
            max(0, math.floor((min(ay, by) - r) * aa)),
            min(size, math.ceil((max(ay, by) + r) * aa)),
        )
        x0, x1 = (
            max(0, math.floor((min(ax, bx) - r) * aa)),
            min(size, math.ceil((max(ax, bx) + r) * aa)),
        )
        y, x = self.centres[y0:y1, None], self.centres[None, x0:x1]  # pixel centres, image units
        dy, dx = by - ay, bx - ax
        s = np.clip(((y - ay) * dy + (x - ax) * dx) / max(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
        dist2 = (y - ay - s * dy) ** 2 + (x - ax - s * dx) ** 2
        return (slice(y0, y1), slice(x0, x1)), dist2 <= r * r

    def inside(self, point: np.ndarray) -> bool:
        return bool(np.all(point >= 0) and np.all(point < self.spec.resolution))

    def collides(self, fp: Footprint, snake: Snake) -> bool:
        """Does fp overlap anything taken, except the snake's own last paddle?"""
        last = snake.footprints[-1] if snake.footprints else None
        if last is not None:
            self.taken[last[0]] -= last[1]
        window, mask = fp
        hit = bool((self.taken[window][mask] > 0).any())
        if last is not None:
            self.taken[last[0]] += last[1]
        return hit

    def add(self, snake: Snake, start: np.ndarray, end: np.ndarray, fp: Footprint) -> None:
        window, mask = fp
        self.taken[window] += mask
        snake.paddles.append((start, end))
        snake.footprints.append(fp)

    def remove(self, snake: Snake) -> None:
        for window, mask in snake.footprints:
            self.taken[window] -= mask

    # --- growing snakes ----------------------------------------------------------------------
    def seed(self, tail: np.ndarray, theta: float) -> Snake | None:
        """A snake whose first paddle runs from `tail` along theta, if it fits."""
        head = tail + self.spec.paddle_length * direction(theta)
        if not (self.inside(tail) and self.inside(head)):
            return None
        new = Snake(pivot=head + self.m * direction(theta), theta=theta)
        fp = self.footprint(tail, head)
        if self.collides(fp, new):
            return None
        self.add(new, tail, head, fp)
        return new

    def extend(self, snake: Snake) -> bool:
        """Add one paddle, its turn drawn by continuity among the turns that fit (a drawn turn
        that collides is struck out and another drawn); False at a dead end."""
        theta = snake.theta + self.turns
        ends = snake.pivot + self.reach * direction(theta)  # [K, 2]
        p = self.turn_weights * np.all((ends >= 0) & (ends < self.spec.resolution), axis=1)
        while (cdf := np.cumsum(p))[-1] > 0:
            k = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
            u = direction(float(theta[k]))
            start, end = snake.pivot + self.m * u, ends[k]
            fp = self.footprint(start, end)
            if not self.collides(fp, snake):
                self.add(snake, start, end, fp)
                snake.pivot = end + self.m * u
                snake.theta = float(theta[k])
                return True
            p[k] = 0.0
        return False

    def target_pair(self) -> list[Snake] | None:
        """Two snakes of contour_length paddles whose starts are seed_distance apart."""
        spec, res = self.spec, self.spec.resolution
        lo, hi = 2 * spec.seed_distance, res - 2 * spec.seed_distance
        if lo >= hi:  # no room for LRA's central band: the centre
            lo, hi = res / 2 - 0.5, res / 2 + 0.5
        first = self.seed(self.rng.uniform(lo, hi, 2), self.rng.uniform(-math.pi, math.pi))
        if first is None:
            return None
        phi = self.rng.uniform(-math.pi, math.pi)
        tail = first.paddles[0][0] + spec.seed_distance * direction(phi)
        second = self.seed(tail, self.rng.uniform(-math.pi, math.pi))
        if second is None:
            self.remove(first)
            return None
        pair = [first, second]
        for _ in range(spec.contour_length - 1):
            for snake in pair:
                if not self.extend(snake):
                    for s in pair:
                        self.remove(s)
                    return None
        return pair

    def distractor(self) -> Snake | None:
        """A short snake seeded on a free pixel, or None if `distractor_tries` all fail."""
        for _ in range(self.spec.distractor_tries):
            free = np.flatnonzero(self.taken.reshape(-1) == 0)
            if len(free) < 0.01 * self.taken.size:  # as the original: stop when nearly full
                return None
            i, j = np.divmod(free[self.rng.integers(len(free))], self.taken.shape[1])
            tail = (np.array([i, j]) + 0.5) / self.aa
            snake = self.seed(tail, self.rng.uniform(-math.pi, math.pi))
            if snake is None:
                continue
            if all(self.extend(snake) for _ in range(self.spec.distractor_length - 1)):
                return snake
            self.remove(snake)
        return None


def render(spec: SnakesSpec, snakes: list[Snake], markers: list[np.ndarray]) -> np.ndarray:
    """Paddles (lines at antialias x, Lanczos down) and marker discs -> uint8 [res, res]."""
    aa, res = spec.antialias, spec.resolution
    fine = Image.new("F", (res * aa, res * aa), 0.0)
    draw = ImageDraw.Draw(fine)
    width = round(spec.thickness * aa)
    for snake in snakes:
        for a, b in snake.paddles:
            # PIL takes (x, y) in pixel indices: a point at image units p sits at p * aa - 0.5
            draw.line([tuple(a[::-1] * aa - 0.5), tuple(b[::-1] * aa - 0.5)], fill=1.0, width=width)
    paddles = np.clip(np.asarray(fine.resize((res, res), Image.LANCZOS)), 0, 1)
    paddles = paddles * spec.paddle_contrast * spec.snake_contrast

    centres = (np.arange(res * aa) + 0.5) / aa  # fine pixel centres, image units
    y, x = centres[:, None], centres[None, :]
    discs = np.zeros((res * aa, res * aa), dtype=np.float32)
    for cy, cx in markers:
        discs[(y - cy) ** 2 + (x - cx) ** 2 <= spec.marker_radius**2] = 1.0
    discs = np.clip(np.asarray(Image.fromarray(discs).resize((res, res), Image.LANCZOS)), 0, 1)

    image = np.maximum(paddles, discs)
    return np.round(image / max(float(image.max()), 1e-12) * 255).astype(np.uint8)


def compose(
    spec: SnakesSpec, rng: np.random.Generator, label: int
) -> tuple[list[Snake], list[np.ndarray], int]:
    """One image's snakes (the two targets first), its two marker centres and its margin."""
    margin = int(spec.margins[rng.integers(len(spec.margins))])
    sketch = Sketch(spec, rng, margin)
    pair = None
    for _ in range(MAX_PAIR_TRIES):
        pair = sketch.target_pair()
        if pair is not None:
            break
    if pair is None:
        raise RuntimeError(
            f"could not place two snakes of {spec.contour_length} paddles in "
            f"{spec.resolution}x{spec.resolution} after {MAX_PAIR_TRIES} tries: the settings "
            "are too dense"
        )
    distractors = [s for s in (sketch.distractor() for _ in range(spec.num_distractors)) if s]
    origin = int(rng.integers(2))
    terminal = origin if label == 1 else 1 - origin
    markers = [pair[origin].paddles[0][0], pair[terminal].paddles[-1][1]]
    return pair + distractors, markers, margin


def draw_sample(spec: SnakesSpec, rng: np.random.Generator, label: int) -> tuple[np.ndarray, int]:
    """One image [res, res] uint8 with the given label (1: both markers on one snake)."""
    snakes, markers, margin = compose(spec, rng, label)
    return render(spec, snakes, markers), margin


def batch_rng(seed: int, spec: SnakesSpec, batch: int) -> np.random.Generator:
    return np.random.default_rng([seed, spec.resolution, spec.contour_length, batch])


def write_batch(folder: str, spec: SnakesSpec, seed: int, batch: int, n: int) -> int:
    """Images imgs/{batch}/sample_{0..n-1}.png, then metadata/{batch}.npy (last, atomically)."""
    folder_path = Path(folder)
    meta = folder_path / "metadata" / f"{batch}.npy"
    if meta.exists():
        return 0
    rng = batch_rng(seed, spec, batch)
    labels = rng.permutation(np.arange(n) % 2)  # balanced: n/2 of each label per batch
    imgs = folder_path / "imgs" / str(batch)
    imgs.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, label in enumerate(labels.tolist()):
        pixels, margin = draw_sample(spec, rng, label)
        Image.fromarray(pixels).save(imgs / f"sample_{i}.png")
        lines.append(
            f"imgs/{batch} sample_{i}.png {i} {label} {spec.continuity} {spec.contour_length} "
            f"{spec.distractor_length} {spec.paddle_length} {spec.thickness} {margin} 1\n"
        )
    meta.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(meta) as tmp:
        tmp.write_text("".join(lines))
    return n


def generate(
    folder: str | Path,
    spec: SnakesSpec,
    n: int,
    seed: int = 0,
    workers: int = 1,
    batch_size: int = 1000,
) -> dict[str, Any]:
    """Write n images into folder in the release layout; resumes an interrupted run."""
    folder = Path(folder)
    settings = {"generator": "lra.data.snakes", "seed": seed, "n": n, "batch_size": batch_size}
    settings["spec"] = {**asdict(spec), "margins": list(spec.margins)}
    manifest_path = folder / "MANIFEST.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if {k: old.get(k) for k in settings} != settings:
            raise FileExistsError(
                f"{folder} holds images made with other settings ({manifest_path}); delete the "
                "folder or write elsewhere (--out)"
            )
    elif (folder / "metadata").exists():
        raise FileExistsError(
            f"{folder} holds a Pathfinder set this generator did not make (no MANIFEST.json); "
            "refusing to write into it: choose another --out"
        )
    else:
        write_json(manifest_path, {**settings, "complete": False})

    t0 = time.time()
    sizes = {b: min(batch_size, n - b * batch_size) for b in range(math.ceil(n / batch_size))}
    todo = [b for b in sizes if not (folder / "metadata" / f"{b}.npy").exists()]
    log.info("%s: %d of %d batches to write, %d workers", folder, len(todo), len(sizes), workers)
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
            jobs = [pool.submit(write_batch, str(folder), spec, seed, b, sizes[b]) for b in todo]
            for job in jobs:
                job.result()
    else:
        for b in todo:
            write_batch(str(folder), spec, seed, b, sizes[b])
    manifest = {**settings, "complete": True, "batches": len(sizes)}
    manifest["seconds"] = round(time.time() - t0, 1)
    write_json(manifest_path, manifest)
    return manifest


def sample_grid(folder: str | Path, out: str | Path, columns: int = 8) -> Path:
    """A PNG of the first images of batch 0, label 1 on the top row and label 0 below, each
    enlarged to about 128 pixels."""
    folder = Path(folder)
    rows = [line.split(" ") for line in (folder / "metadata" / "0.npy").read_text().splitlines()]
    by_label = {1: [], 0: []}
    for r in rows:
        if len(by_label[int(r[3])]) < columns:
            by_label[int(r[3])].append(folder / r[0] / r[1])
    tiles = [[np.asarray(Image.open(p)) for p in by_label[label]] for label in (1, 0)]
    side = tiles[0][0].shape[0]
    gap, scale = 2, max(1, 128 // side)
    grid = np.full((2 * side + gap, columns * side + (columns - 1) * gap), 128, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            grid[
                r * (side + gap) : r * (side + gap) + side,
                c * (side + gap) : c * (side + gap) + side,
            ] = tile
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(grid)
    image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(out)
    return out
