"""Retrieval (AAN): the release's TSV format, bad rows, and the two-tower model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lra_files import write_aan

from lra.data.retrieval import RetrievalDataModule, read_pairs
from lra.models.classifier import PairHead, TwoTowerClassifier, build_classifier, count_parameters

ROWS = [
    ("1.0", "P00-1001", "P01-2002", "Parsing with CCG.", "Statistical parsing ✓"),
    ("0.0", "P02-3003", "P03-4004", "Speech 'quotes' \"too\"", "Morphology"),
    ("0", "P04-5005", "P05-6006", "x" * 12_000, "short"),
]


def datamodule(tmp_path: Path, **changes) -> RetrievalDataModule:
    kwargs = dict(
        task_name="retrieval", cache_dir=str(tmp_path / "cache"), max_len=16, batch_size=2,
        dir=str(tmp_path / "tsv_data"),
    )  # fmt: skip
    return RetrievalDataModule(**{**kwargs, **changes})


def tokens(text: str | bytes) -> list[int]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return [b + 1 for b in data]


def test_reader_parses_the_release_format(tmp_path: Path) -> None:
    write_aan(tmp_path, {"train": ROWS})
    rows = list(read_pairs(tmp_path / "new_aan_pairs.train.tsv", doc_bytes=10_000, max_len=4000))
    assert [label for _, label in rows] == [1, 0, 0], "labels parsed as float, then int"
    (a, b), _ = rows[0]
    assert a.tolist() == tokens("Parsing with CCG.") and b.tolist() == tokens(
        "Statistical parsing ✓"
    )
    (a, _), _ = rows[1]
    assert a.tolist() == tokens("Speech 'quotes' \"too\""), "quotes are text: no quote handling"
    (a, b), _ = rows[2]
    assert len(a) == 4000 and b.tolist() == tokens("short"), "each document cut to max_len"
    cut = list(read_pairs(tmp_path / "new_aan_pairs.train.tsv", doc_bytes=10, max_len=4000))
    assert cut[0][0][0].tolist() == tokens(b"Parsing wi"), "first doc_bytes bytes, then tokens"


def test_datamodule_splits_files_and_pads_both_documents(tmp_path: Path) -> None:
    write_aan(tmp_path / "tsv_data", {"train": ROWS, "eval": ROWS[:2], "test": ROWS[1:]})
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup()
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3, "val": 2, "test": 2}
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids_1", "input_ids_2", "label"}
    assert batch["input_ids_1"].shape == batch["input_ids_2"].shape == (2, 16)
    assert batch["label"].tolist() == [1, 0]
    second = batch["input_ids_2"][1].tolist()
    assert second == tokens("Morphology") + [0] * 6, "real bytes first, then 0 padding"
    assert int(batch["input_ids_1"].max()) < dm.vocab_size == 257


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "1\tid1\tid2\tonly four columns\n",
            "expected 5 tab-separated columns (label id1 id2 text1 text2), got 4",
        ),
        (
            "1\ta\tb\tc\td\textra\n",
            "expected 5 tab-separated columns (label id1 id2 text1 text2), got 6",
        ),
        ("yes\ta\tb\tc\td\n", "label 'yes' is not a number"),
        ("2.0\ta\tb\tc\td\n", "label 2 is not 0 or 1"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "new_aan_pairs.eval.tsv"
    path.write_text("1.0\ta\tb\tgood\trow\n" + line)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        list(read_pairs(path, 10_000, 100))
    assert str(err.value).startswith(f"{path}:2: ")


def test_missing_files_name_the_path_and_the_release(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        datamodule(tmp_path).prepare_data()
    assert f"{tmp_path / 'tsv_data' / 'new_aan_pairs.train.tsv'} not found" in str(err.value)
    assert "lra_release.gz" in str(err.value)


ENCODER = dict(
    max_len=12, d_model=8, num_layers=1, num_heads=2, qkv_dim=8, mlp_dim=16, dropout=0.0,
    attn_dropout=0.0, pos_emb="sinusoidal", pooling="cls",
)  # fmt: skip


def test_two_towers_share_one_encoder_and_combine_u_v_uv_and_u_minus_v() -> None:
    torch.manual_seed(0)
    net = build_classifier(
        ENCODER, {"name": "baseline"}, vocab_size=257, num_classes=2, head="dual"
    )
    single = build_classifier(ENCODER, {"name": "baseline"}, vocab_size=257, num_classes=2)
    assert isinstance(net, TwoTowerClassifier) and isinstance(net.head, PairHead)
    encoder = sum(p.numel() for p in net.encoder.parameters())
    head = (4 * 8 * 16 + 16) + (16 * 8 + 8) + (8 * 2 + 2)  # Dense(mlp), Dense(mlp/2), Dense(2)
    assert count_parameters(net)["total"] == encoder + head, "one encoder, not two"
    assert count_parameters(net)["mixer"] == count_parameters(single)["mixer"]

    net.eval()
    x1 = torch.randint(1, 257, (3, 12))
    x2 = torch.randint(1, 257, (3, 12))
    logits = net({"input_ids_1": x1, "input_ids_2": x2})
    assert logits.shape == (3, 2)
    u, v = net.encoder(x1), net.encoder(x2)
    torch.testing.assert_close(logits, net.head.mlp(torch.cat([u, v, u * v, u - v], dim=-1)))
    swapped = net({"input_ids_1": x2, "input_ids_2": x1})
    assert not torch.allclose(logits, swapped), "u - v makes the pair ordered"


def test_unknown_head_is_refused() -> None:
    with pytest.raises(ValueError, match="task.head must be one of single, dual, not 'triple'"):
        build_classifier(
            ENCODER, {"name": "baseline"}, vocab_size=257, num_classes=2, head="triple"
        )
