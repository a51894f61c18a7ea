"""Image (grey CIFAR-10): the Python release, Hub-style Parquet, LRA's grey, splits, offset."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from lra_files import write_cifar_python
from PIL import Image

from lra.data.image import ImageDataModule, to_grey


def datamodule(tmp_path: Path, **changes) -> ImageDataModule:
    kwargs = dict(
        task_name="image", cache_dir=str(tmp_path / "cache"), max_len=1024, batch_size=4,
        dir=str(tmp_path / "data"), download=False,
    )  # fmt: skip
    return ImageDataModule(**{**kwargs, **changes})


def ready(dm: ImageDataModule) -> ImageDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def grey_images(n: int, seed: int) -> np.ndarray:
    """RGB images whose three channels are equal, so their grey level is known exactly."""
    g = np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


@pytest.mark.parametrize(
    "rgb, grey",
    [
        ((0, 0, 0), 0),
        ((255, 255, 255), 255),
        ((255, 0, 0), 76),  # 0.2989 * 255.5 = 76.4
        ((0, 255, 0), 149),  # 0.5870 * 255.5 = 149.98
        ((0, 0, 255), 29),
        ((10, 20, 30), 18),  # 18.149 * 255.5 / 255 = 18.18
        # tf's convert_image_dtype scales by 255.5: 199.98 * 255.5 / 255 = 200.37, where a plain
        # round-down of 0.2989 R + 0.5870 G + 0.1140 B would give 199
        ((200, 200, 200), 200),
    ],
)
def test_grey_is_tf_rgb_to_grayscale_on_uint8(rgb: tuple[int, int, int], grey: int) -> None:
    assert to_grey(np.array([rgb], dtype=np.uint8)).tolist() == [grey]


def test_python_release_gives_lra_splits_row_major_tokens_and_labels(tmp_path: Path) -> None:
    train, test = grey_images(20, 0), grey_images(8, 1)
    train[0, 0, :3] = (0, 0, 0)  # black pixels: token 1, not padding
    train[0, 1, 0] = 255
    labels = {"train": [i % 10 for i in range(20)], "test": [9 - i for i in range(8)]}
    write_cifar_python(tmp_path / "data", {"train": train, "test": test}, labels)
    dm = ready(datamodule(tmp_path))
    # train[:90%] and train[90%:] of the files' order; test as is
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 18, "val": 2, "test": 8}
    assert list(dm.splits["val"]["label"]) == [8, 9]
    assert list(dm.splits["test"]["label"]) == labels["test"]
    first = np.asarray(dm.splits["train"]["input_ids"][0])
    assert first.shape == (1024,)
    np.testing.assert_array_equal(first, train[0, :, :, 0].reshape(-1).astype(int) + 1)
    assert first[:3].tolist() == [1, 1, 1] and first[32] == 256, "row-major, offset 1"
    np.testing.assert_array_equal(
        np.asarray(dm.splits["val"]["input_ids"][1]), train[19, :, :, 0].reshape(-1).astype(int) + 1
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 1024) and (batch["input_ids"] > 0).all()
    assert dm.vocab_size == 257 and dm.num_classes == 10


def test_colour_planes_are_read_as_r_g_b(tmp_path: Path) -> None:
    rgb = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    rgb[:, :, :, 0] = 255  # pure red
    write_cifar_python(
        tmp_path / "data", {"train": rgb, "test": rgb[:2]}, {"train": [0] * 10, "test": [0, 0]}
    )
    dm = ready(datamodule(tmp_path))
    assert set(np.asarray(dm.splits["test"]["input_ids"][0]).tolist()) == {76 + 1}


def test_offset_zero_reproduces_lra_tokens(tmp_path: Path) -> None:
    images = grey_images(10, 2)
    write_cifar_python(
        tmp_path / "data",
        {"train": images, "test": images[:2]},
        {"train": [1] * 10, "test": [1, 1]},
    )
    dm = ready(datamodule(tmp_path, pixel_offset=0))
    np.testing.assert_array_equal(
        np.asarray(dm.splits["test"]["input_ids"][0]), images[0, :, :, 0].reshape(-1)
    )


def test_hub_style_parquet_with_png_bytes_is_the_second_source(tmp_path: Path) -> None:
    images = grey_images(10, 3)
    schema = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    folder = tmp_path / "data" / "cifar10" / "plain_text"
    folder.mkdir(parents=True)
    for split, n in (("train", 10), ("test", 3)):
        ds = datasets.Dataset.from_dict(
            {"img": [Image.fromarray(x) for x in images[:n]], "label": list(range(n))}, schema
        )
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    dm = ready(datamodule(tmp_path))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 9, "val": 1, "test": 3}
    np.testing.assert_array_equal(
        np.asarray(dm.splits["test"]["input_ids"][2]),
        images[2, :, :, 0].reshape(-1).astype(int) + 1,
    )
    assert list(dm.splits["val"]["label"]) == [9]


def test_offline_fallback_names_the_release_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(name, **kwargs):
        raise ConnectionError("Couldn't reach 'cifar10' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError) as err:
        datamodule(tmp_path, download=True).prepare_data()
    message = str(err.value)
    assert "datasets.load_dataset('cifar10') failed (ConnectionError" in message
    assert f"{tmp_path / 'data' / 'cifar-10-batches-py'}/{{data_batch_1..5,test_batch}}" in message
    assert "cifar-10-python.tar.gz" in message


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda b: b"\x80\x04}\x94.", "not a CIFAR-10 python batch"),  # a pickled empty dict
        (lambda b: b[:100], "not a readable CIFAR-10 python batch"),  # cut short, as a bad copy
    ],
)
def test_a_file_that_is_not_a_cifar_batch_is_named(tmp_path: Path, spoil, message: str) -> None:
    images = grey_images(10, 4)
    write_cifar_python(
        tmp_path / "data",
        {"train": images, "test": images[:2]},
        {"train": [0] * 10, "test": [0, 0]},
    )
    bad = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(spoil(bad.read_bytes()))
    with pytest.raises(ValueError, match=f"{bad}: {message}"):
        datamodule(tmp_path).prepare_data()
