"""Pathfinder and Path-X: the release layout, bad inputs, and the snakes generator."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from lra_files import random_images, write_pathfinder
from PIL import Image

from lra.data.pathfinder import PathfinderDataModule, read_metadata
from lra.data.prepare import main as prepare
from lra.data.snakes import DIFFICULTIES, SnakesSpec, compose, generate

HARD = "pathfinder32/curv_contour_length_14"
SPEC_128 = dict(
    resolution=128, paddle_length=5.0, thickness=1.5, margins=(2, 3), marker_radius=3.0,
    seed_distance=20.0, continuity=1.8, distractor_budget=35, paddle_contrast=1.0,
    snake_contrast=0.9,
)  # fmt: skip


def datamodule(tmp_path: Path, **changes) -> PathfinderDataModule:
    kwargs = dict(
        task_name="pathfinder", cache_dir=str(tmp_path / "cache"), max_len=1024, batch_size=4,
        dir=str(tmp_path / "lra"), resolution=32, difficulty="hard",
    )  # fmt: skip
    return PathfinderDataModule(**{**kwargs, **changes})


def ready(dm: PathfinderDataModule) -> PathfinderDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def files(folder: Path) -> dict[str, bytes]:
    """Every image and metadata file, by relative path (the manifest records timings)."""
    paths = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "MANIFEST.json"]
    return {str(p.relative_to(folder)): p.read_bytes() for p in paths}


# --- reader ----------------------------------------------------------------------------------
def test_release_layout_splits_80_10_10_in_numeric_metadata_order(tmp_path: Path) -> None:
    images = random_images(20, 32)
    images[0][0, :2] = 0  # black: token 1, not padding
    labels = [1, 0, 0, 1] * 5
    write_pathfinder(tmp_path / "lra" / HARD, images, labels, per_file=1)  # metadata 0..19
    dm = ready(datamodule(tmp_path))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 16, "val": 2, "test": 2}
    # files 0, 1, 2, ..., 19 in numeric order (not 0, 1, 10, 11, ...)
    for i, x in enumerate(dm.splits["train"]["input_ids"]):
        np.testing.assert_array_equal(np.asarray(x), images[i].reshape(-1).astype(int) + 1)
    np.testing.assert_array_equal(
        np.asarray(dm.splits["test"]["input_ids"][1]), images[19].reshape(-1).astype(int) + 1
    )
    assert list(dm.splits["train"]["label"]) == labels[:16]
    assert list(dm.splits["val"]["label"]) == labels[16:18]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 1024) and int(batch["input_ids"].min()) >= 1
    assert int(batch["input_ids"].max()) <= 256 < dm.vocab_size == 257 and dm.num_classes == 2


def test_metadata_lines_are_read_as_the_release_writes_them(tmp_path: Path) -> None:
    folder = tmp_path / "curv_baseline"
    (folder / "metadata").mkdir(parents=True)
    (folder / "metadata" / "3.npy").write_text(
        "imgs/3 sample_0.png 0 1 1.0 6 2 2 0.5 1 1\nimgs/3 sample_1.png 1 0 1.0 6 2 2 0.5 1 1\n"
    )
    assert read_metadata(folder) == [
        (folder / "imgs/3/sample_0.png", 1),
        (folder / "imgs/3/sample_1.png", 0),
    ]


def test_empty_png_is_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_pathfinder(tmp_path / "lra" / HARD, random_images(20, 32), [0, 1] * 10, per_file=10)
    empty = tmp_path / "lra" / HARD / "imgs" / "0" / "sample_3.png"
    empty.write_bytes(b"")  # as pathfinder32/curv_baseline/imgs/0/sample_172.png in the release
    with caplog.at_level(logging.WARNING, logger="lra.data.pathfinder"):
        dm = ready(datamodule(tmp_path))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 15, "val": 2, "test": 2}
    assert dm.skipped == {"train": 1, "val": 0, "test": 0}
    assert "pathfinder train: skipped 1 of 16 images, empty or unreadable" in caplog.text
    assert str(empty) in caplog.text


def test_a_split_of_only_empty_images_is_an_error_naming_it(tmp_path: Path) -> None:
    write_pathfinder(tmp_path / "lra" / HARD, random_images(20, 32), [0, 1] * 10, per_file=10)
    for png in (tmp_path / "lra" / HARD / "imgs").rglob("*.png"):
        png.write_bytes(b"")
    with pytest.raises(ValueError, match=r"pathfinder train: no rows in .*metadata.*: the split"):
        datamodule(tmp_path).prepare_data()


def test_a_restored_image_is_new_data_for_the_cache(tmp_path: Path) -> None:
    write_pathfinder(tmp_path / "lra" / HARD, random_images(20, 32), [0, 1] * 10, per_file=10)
    image = tmp_path / "lra" / HARD / "imgs" / "0" / "sample_3.png"
    saved = image.read_bytes()
    image.write_bytes(b"")  # unreadable: skipped
    assert len(ready(datamodule(tmp_path)).splits["train"]) == 15
    image.write_bytes(saved)  # restored: the cache of the 15 rows is not the data any more
    assert len(ready(datamodule(tmp_path)).splits["train"]) == 16


def test_missing_metadata_folder_names_the_path_and_the_ways_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        datamodule(tmp_path).prepare_data()
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'lra' / HARD / 'metadata'} not found")
    assert "lra_release.gz" in message
    assert "python -m lra.data.prepare pathfinder --resolution R --difficulty D" in message


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgs/0 sample_0.png 0\n", "expected at least 4 space-separated fields"),
        ("imgs/0 sample_0.png 0 yes 1.0\n", "label 'yes' is not an integer"),
        ("imgs/0 sample_0.png 0 2 1.0\n", "label 2 is not 0 or 1"),
    ],
)
def test_bad_metadata_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "metadata").mkdir()
    path = tmp_path / "metadata" / "0.npy"
    path.write_text("imgs/0 sample_1.png 1 1 1.0 14 4 2 0.5 1 1\n" + line)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        read_metadata(tmp_path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_an_image_of_the_wrong_size_names_the_resolution(tmp_path: Path) -> None:
    write_pathfinder(tmp_path / "lra" / HARD, random_images(10, 128), [0, 1] * 5, per_file=10)
    with pytest.raises(ValueError, match=r"expected an 8-bit grey 32x32 PNG, got mode L 128x128"):
        datamodule(tmp_path).prepare_data()


def test_pathx_reads_128x128_images_as_16384_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "lra" / "pathfinder128" / "curv_contour_length_14"
    images = random_images(10, 128)
    write_pathfinder(folder, images, [1, 0] * 5, per_file=5)
    dm = ready(datamodule(tmp_path, resolution=128, max_len=16384, task_name="pathx"))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 8, "val": 1, "test": 1}
    np.testing.assert_array_equal(
        np.asarray(dm.splits["val"]["input_ids"][0]), images[8].reshape(-1).astype(int) + 1
    )


def test_generate_true_makes_a_small_set_when_missing(tmp_path: Path) -> None:
    dm = ready(
        datamodule(tmp_path, difficulty="easy", generate=True, generator={"n": 10, "batch_size": 5})
    )
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 8, "val": 1, "test": 1}
    assert (tmp_path / "lra" / "pathfinder32" / "curv_baseline" / "MANIFEST.json").exists()


# --- generator -------------------------------------------------------------------------------
def test_same_seed_gives_identical_files_whatever_the_worker_count(tmp_path: Path) -> None:
    spec = SnakesSpec(contour_length=6)
    generate(tmp_path / "a", spec, n=12, seed=3, workers=1, batch_size=4)
    generate(tmp_path / "b", spec, n=12, seed=3, workers=2, batch_size=4)
    generate(tmp_path / "c", spec, n=12, seed=4, workers=1, batch_size=4)
    a = files(tmp_path / "a")
    assert sorted(a) == sorted(
        [f"imgs/{b}/sample_{i}.png" for b in range(3) for i in range(4)]
        + [f"metadata/{b}.npy" for b in range(3)]
    )
    assert a == files(tmp_path / "b")
    assert a["metadata/0.npy"] != files(tmp_path / "c")["metadata/0.npy"]


def test_labels_balance_within_one_percent_on_2000_images(tmp_path: Path) -> None:
    generate(tmp_path, SnakesSpec(contour_length=6), n=2000, seed=0, workers=2, batch_size=500)
    labels = [label for _, label in read_metadata(tmp_path)]
    assert len(labels) == 2000
    assert abs(np.mean(labels) - 0.5) <= 0.01
    image = Image.open(tmp_path / "imgs" / "3" / "sample_499.png")
    pixels = np.asarray(image)
    assert image.mode == "L" and pixels.shape == (32, 32)
    assert pixels.max() == 255 and np.median(pixels) == 0, "bright snakes on black"


def test_a_killed_run_resumes_with_the_files_of_an_uninterrupted_one(tmp_path: Path) -> None:
    spec = SnakesSpec(contour_length=6)
    generate(tmp_path / "full", spec, n=9, seed=1, batch_size=3)
    killed = tmp_path / "killed"
    generate(killed, spec, n=9, seed=1, batch_size=3)
    (killed / "metadata" / "2.npy").unlink()  # killed while writing batch 2
    (killed / "imgs" / "2" / "sample_1.png").write_bytes(b"\x89PNG half")
    (killed / "imgs" / "2" / "sample_2.png").unlink()
    done = {p: p.stat().st_mtime_ns for p in (killed / "imgs" / "0").iterdir()}
    manifest = generate(killed, spec, n=9, seed=1, batch_size=3)
    assert files(killed) == files(tmp_path / "full")
    assert {p: p.stat().st_mtime_ns for p in (killed / "imgs" / "0").iterdir()} == done
    assert manifest["complete"] and manifest["batches"] == 3
    with pytest.raises(FileExistsError, match="holds images made with other settings"):
        generate(killed, spec, n=9, seed=2, batch_size=3)


@pytest.mark.parametrize("difficulty", list(DIFFICULTIES))
@pytest.mark.parametrize("resolution", [32, 128])
def test_snakes_follow_the_paddle_geometry(difficulty: str, resolution: int) -> None:
    spec = SnakesSpec(
        contour_length=DIFFICULTIES[difficulty][1], **(SPEC_128 if resolution == 128 else {})
    )
    rng = np.random.default_rng(0)
    for label in (1, 0):
        snakes, markers, m = compose(spec, rng, label)
        (a, b), distractors = snakes[:2], snakes[2:]
        assert len(a.paddles) == len(b.paddles) == spec.contour_length
        assert all(len(d.paddles) == spec.contour_length // 3 for d in distractors)
        assert len(distractors) <= spec.num_distractors
        np.testing.assert_allclose(
            np.linalg.norm(a.paddles[0][0] - b.paddles[0][0]), spec.seed_distance
        )
        max_turn = math.pi / 2 / spec.continuity
        for snake in snakes:
            heads = [np.arctan2(*(e - s)) for s, e in snake.paddles]
            pairs = zip(snake.paddles[:-1], snake.paddles[1:], heads[:-1], heads[1:], strict=True)
            for (s, e), (s2, _), t, t2 in pairs:
                assert np.linalg.norm(e - s) == pytest.approx(spec.paddle_length)
                assert np.linalg.norm(s2 - e) <= 2 * m + 1e-9, "paddles 2 margins apart"
                turn = abs((t2 - t + math.pi) % (2 * math.pi) - math.pi)
                assert turn < max_turn + 1e-9, "turns limited by continuity"
            for s, e in snake.paddles:
                assert np.all((s >= 0) & (s < resolution) & (e >= 0) & (e < resolution))
        # label 1: both markers on the same target snake (its first and last paddle)
        starts, stops = (a.paddles[0][0], b.paddles[0][0]), (a.paddles[-1][1], b.paddles[-1][1])
        joined = [(starts[i], stops[i if label == 1 else 1 - i]) for i in (0, 1)]
        assert any(np.allclose(markers, pair) for pair in joined)


def test_prepare_writes_the_release_layout_and_a_sample_grid(tmp_path: Path, capsys) -> None:
    grid = tmp_path / "grid.png"
    assert prepare(["pathfinder", "--resolution", "32", "--difficulty", "easy", "--n", "16",
                    "--workers", "2", "--out", str(tmp_path / "lra"), "--grid", str(grid),
                    "task.data.generator.batch_size=8"]) == 0  # fmt: skip
    folder = tmp_path / "lra" / "pathfinder32" / "curv_baseline"
    assert f"wrote {folder} in" in capsys.readouterr().out
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == ["0.npy", "1.npy"]
    assert len(read_metadata(folder)) == 16
    assert Image.open(grid).size == (4 * (8 * 32 + 7 * 2), 4 * (2 * 32 + 2))  # 8 over 8, x4
    dm = ready(datamodule(tmp_path, difficulty="easy"))
    assert sum(len(v) for v in dm.splits.values()) == 16
