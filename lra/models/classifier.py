"""Encoder + classification head: the whole network a task trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lra.models.encoder import Encoder
from lra.registry import ARCHITECTURES


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


def build_classifier(
    encoder_cfg: dict[str, Any],
    mixer_cfg: dict[str, Any],
    vocab_size: int,
    num_classes: int,
) -> SequenceClassifier:
    """The task gives the encoder's shape, the model gives the mixer: `{name, **options}`."""
    mixer_options = dict(mixer_cfg)
    mixer = mixer_options.pop("name")
    encoder = Encoder(
        vocab_size=vocab_size, mixer=mixer, mixer_options=mixer_options, **encoder_cfg
    )
    head = ClassifierHead(encoder_cfg["d_model"], encoder_cfg["mlp_dim"], num_classes)
    return SequenceClassifier(encoder, head)


@ARCHITECTURES.register("encoder")
def build_encoder_classifier(
    model_cfg: dict[str, Any], encoder_cfg: dict[str, Any], vocab_size: int, num_classes: int
) -> SequenceClassifier:
    """The default architecture: the shared encoder with the model's mixer (`model.mixer`)."""
    return build_classifier(encoder_cfg, model_cfg["mixer"], vocab_size, num_classes)


def count_parameters(model: SequenceClassifier) -> dict[str, int]:
    """Trainable parameters, whole model and mixers alone (buffers are not parameters)."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    mixer = sum(
        p.numel() for m in model.encoder.mixers() for p in m.parameters() if p.requires_grad
    )
    return {"total": total, "mixer": mixer}
