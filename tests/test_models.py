"""The shared encoder, the softmax mixer, the registry and the parameter counts."""

from __future__ import annotations

import pytest
import torch

from lra.models.attention.baseline import SoftmaxAttention
from lra.models.classifier import build_classifier, count_parameters
from lra.models.encoder import sinusoidal_table
from lra.registry import MIXERS

ENCODER = dict(
    max_len=24,
    d_model=16,
    num_layers=2,
    num_heads=2,
    qkv_dim=16,
    mlp_dim=32,
    dropout=0.1,
    attn_dropout=0.1,
    pos_emb="sinusoidal",
    pooling="cls",
)


def model(**changes):
    torch.manual_seed(0)
    net = build_classifier(
        {**ENCODER, **changes}, {"name": "baseline"}, vocab_size=16, num_classes=10
    )
    return net.eval()


def tokens(lengths: list[int], n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 16, (len(lengths), n), generator=g)
    for i, length in enumerate(lengths):
        x[i, length:] = 0
    return x


def test_logits_have_one_row_per_sequence_and_one_column_per_class() -> None:
    logits = model()({"input_ids": tokens([5, 24, 11], 24)})
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("pos_emb", ["sinusoidal", "learned", "none"])
def test_right_padding_does_not_change_outputs(pooling: str, pos_emb: str) -> None:
    net = model(pooling=pooling, pos_emb=pos_emb)
    x = tokens([7, 12], 12)
    padded = torch.cat([x, torch.zeros(2, 12, dtype=torch.long)], dim=1)
    torch.testing.assert_close(net({"input_ids": x}), net({"input_ids": padded}))


def test_padding_keys_are_masked_in_attention() -> None:
    torch.manual_seed(0)
    mixer = SoftmaxAttention(d_model=8, num_heads=2, qkv_dim=8).eval()
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([[True, True, True, False, False, False]])
    y = mixer(x, mask)
    x2 = x.clone()
    x2[:, 3:] = 100.0  # whatever sits at padding positions
    torch.testing.assert_close(mixer(x2, mask)[:, :3], y[:, :3])


def test_sequence_longer_than_max_len_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds the encoder's max_len=24"):
        model()({"input_ids": tokens([30], 30)})


def test_sinusoidal_table_matches_the_formula() -> None:
    table = sinusoidal_table(10, 8)
    p, i = 3, 2
    assert table[p, 2 * i].item() == pytest.approx(
        torch.sin(torch.tensor(p / 10000 ** (2 * i / 8))).item()
    )
    assert table[p, 2 * i + 1].item() == pytest.approx(
        torch.cos(torch.tensor(p / 10000 ** (2 * i / 8))).item()
    )


def test_parameter_counts_are_the_trainable_parameters() -> None:
    net = model(pos_emb="learned")
    counts = count_parameters(net)
    embed, positions, cls, norm = 16 * 16, (1 + 24) * 16, 16, 2 * 16  # the CLS at position 0
    mixer = 16 * 48 + 48 + 16 * 16 + 16  # qkv and out projections
    mlp = (16 * 32 + 32) + (32 * 16 + 16)
    head = (16 * 32 + 32) + (32 * 10 + 10)  # Dense(mlp_dim) -> ReLU -> Dense(classes)
    assert counts["total"] == embed + positions + cls + 2 * (2 * norm + mixer + mlp) + norm + head
    # per layer: qkv (16*48 + 48) + out (16*16 + 16)
    assert counts["mixer"] == 2 * (16 * 48 + 48 + 16 * 16 + 16)
    sinusoidal = count_parameters(model(pos_emb="sinusoidal"))
    assert counts["total"] - sinusoidal["total"] == 25 * 16, "a fixed table is not a parameter"


def test_registry_lists_baseline_and_names_unknown_mixers() -> None:
    assert "baseline" in MIXERS.names()
    with pytest.raises(KeyError, match="unknown mixer 'nope'; registered: .*baseline"):
        MIXERS.get("nope")


def test_bad_encoder_options_are_refused() -> None:
    with pytest.raises(ValueError, match="pooling must be cls, mean or first"):
        model(pooling="max")
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        model(qkv_dim=15)
