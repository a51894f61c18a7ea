"""Initialisations of LRA's released code (google-research/long-range-arena, Flax), for
`task.encoder.init: lra`; `torch` keeps PyTorch's defaults.

- Dense layers of the blocks (mixer and MLP): `xavier_uniform` kernels, std sqrt(2 / (fan_in +
  fan_out)), biases N(0, 1e-6) (LRA's `bias_init=normal(stddev=1e-6)`). Flax's DenseGeneral
  flattens a kernel to [in, out] before initialising it, so each of q, k, v gets its own fans: a
  Linear that fuses k projections along its outputs says so with `linear.fused = k`.
- The classifier head: Flax's default Dense, `lecun_normal` (a normal truncated at 2 std, scaled
  to variance 1 / fan_in) and zero biases.
- The embedding N(0, 1) (PyTorch's default too); the CLS token zeros (lra/models/encoder.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

INITS = ("lra", "torch")
# the std of a standard normal truncated to [-2, 2] (JAX's variance_scaling divides by it)
TRUNCATED_STD = 0.87962566103423978


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"task.encoder.init must be lra (LRA's code) or torch, not '{init}'")
    return init


def xavier_dense_(linear: nn.Linear) -> None:
    """xavier_uniform on each fused projection of `linear`, biases N(0, 1e-6)."""
    for w in linear.weight.chunk(getattr(linear, "fused", 1), dim=0):  # [out/k, in] each
        nn.init.xavier_uniform_(w)
    if linear.bias is not None:
        nn.init.normal_(linear.bias, std=1e-6)


def lecun_dense_(linear: nn.Linear) -> None:
    """Flax's default Dense: lecun_normal kernel (truncated normal), zero bias."""
    std = math.sqrt(1.0 / linear.in_features) / TRUNCATED_STD
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def init_blocks_lra_(module: nn.Module) -> None:
    """Every nn.Linear of the encoder's blocks (mixers and MLPs) as LRA's dense layers."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            xavier_dense_(m)


@torch.no_grad()
def init_head_lra_(module: nn.Module) -> None:
    """Every nn.Linear of a classifier head as Flax's default Dense."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            lecun_dense_(m)
