"""Encoder + classification head: the whole network a task trains.

`head: single` (one sequence per example) or `head: dual` (Retrieval: two documents, two towers
that share one encoder; `task.head_interaction`: concat `[u, v]`, LRA's code, or nli
`[u, v, u*v, u-v]`, the paper's and S4's). With `task.encoder.init: lra` the head's dense layers
are Flax's default (lecun_normal, zero bias), as LRA's code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lra.models.encoder import Encoder
from lra.models.init import init_head_lra_
from lra.registry import ARCHITECTURES

INTERACTIONS = {
    "concat": (2, lambda u, v: [u, v]),  # LRA's code (interaction=None)
    "nli": (4, lambda u, v: [u, v, u * v, u - v]),  # the paper's, S4's, Nyströmformer's
}


class ClassifierHead(nn.Sequential):
    """LRA's head: Dense(mlp_dim) -> ReLU -> Dense(num_classes)."""

    def __init__(self, d_in: int, mlp_dim: int, num_classes: int) -> None:
        super().__init__(nn.Linear(d_in, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, num_classes))


class SequenceClassifier(nn.Module):
    """One sequence in (`batch["input_ids"]`), class logits out."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch["input_ids"]))


class PairHead(nn.Module):
    """LRA's dual head: [u, v] or [u, v, u*v, u-v] -> Dense(mlp) -> ReLU -> Dense(mlp/2) -> ReLU
    -> Dense(C)."""

    def __init__(self, d_in: int, mlp_dim: int, num_classes: int, interaction: str = "nli") -> None:
        super().__init__()
        if interaction not in INTERACTIONS:
            raise ValueError(
                f"task.head_interaction must be one of {', '.join(INTERACTIONS)}, not '{interaction}'"
            )
        parts, self.combine = INTERACTIONS[interaction]
        self.mlp = nn.Sequential(
            nn.Linear(parts * d_in, mlp_dim),
            nn.ReLU(),
            nn.Linear(mlp_dim, mlp_dim // 2),
            nn.ReLU(),
            nn.Linear(mlp_dim // 2, num_classes),
        )

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat(self.combine(u, v), dim=-1))  # [B, 2D or 4D] -> [B, C]


class TwoTowerClassifier(nn.Module):
    """Two documents in (`input_ids_1`, `input_ids_2`), each encoded separately by the same
    encoder (shared weights), pooled to u and v [B, D], classified by `PairHead`."""

    def __init__(self, encoder: Encoder, head: PairHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u = self.encoder(batch["input_ids_1"])
        v = self.encoder(batch["input_ids_2"])
        return self.head(u, v)


def single_tower(
    encoder: Encoder, d: int, mlp_dim: int, num_classes: int, interaction: str
) -> nn.Module:
    return SequenceClassifier(encoder, ClassifierHead(d, mlp_dim, num_classes))


def two_towers(encoder: Encoder, d: int, mlp_dim: int, num_classes: int, interaction: str) -> nn.Module:
    return TwoTowerClassifier(encoder, PairHead(d, mlp_dim, num_classes, interaction))


HEADS = {"single": single_tower, "dual": two_towers}


def build_classifier(
    encoder_cfg: dict[str, Any],
    mixer_cfg: dict[str, Any],
    vocab_size: int,
    num_classes: int,
    head: str = "single",
    interaction: str = "nli",
) -> nn.Module:
    """The task gives the encoder's shape and head, the model the mixer: `{name, **options}`."""
    if head not in HEADS:
        raise ValueError(f"task.head must be one of {', '.join(HEADS)}, not '{head}'")
    mixer_options = dict(mixer_cfg)
    mixer = mixer_options.pop("name")
    encoder = Encoder(
        vocab_size=vocab_size, mixer=mixer, mixer_options=mixer_options, **encoder_cfg
    )
    net = HEADS[head](
        encoder, encoder_cfg["d_model"], encoder_cfg["mlp_dim"], num_classes, interaction
    )
    if encoder_cfg.get("init", "lra") == "lra":
        init_head_lra_(net.head)
    return net


@ARCHITECTURES.register("encoder")
def build_encoder_classifier(
    model_cfg: dict[str, Any],
    encoder_cfg: dict[str, Any],
    vocab_size: int,
    num_classes: int,
    head: str = "single",
    interaction: str = "nli",
) -> nn.Module:
    """The default architecture: the shared encoder with the model's mixer (`model.mixer`)."""
    return build_classifier(
        encoder_cfg, model_cfg["mixer"], vocab_size, num_classes, head, interaction
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Trainable parameters, whole model and mixers alone (buffers are not parameters)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mixer = sum(
        p.numel() for m in model.encoder.mixers() for p in m.parameters() if p.requires_grad
    )
    return {"total": total, "mixer": mixer}
