"""The shared encoder: one code path for every backbone; only the token mixer differs.

tokens [B, n] -> embed -> (CLS) + positions -> N x pre-LN [mixer + MLP(GELU)] -> LN -> pool [B, D]

Token id 0 is padding. Where LRA's released code and this harness differ, a switch says which:
- `init`: lra (LRA's code, lra/models/init.py; the CLS token zeros) | torch (PyTorch's defaults,
  the CLS N(0, 0.02)). A mixer option `bias: null` follows it: lra none, torch biased.
- `cls_position`: true (LRA: the CLS takes position 0, the tokens 1..n) | false (the CLS gets no
  position, the tokens 0..n-1).
- `padding`: real (padding is masked as keys, its embedding is frozen at 0, MEAN pools the real
  tokens) | lra (LRA's code: padding's embedding is learned, padded queries are masked too (an
  attention mixer's padded query attends uniformly to every position, as Flax's -1e10 bias
  makes it), the CLS is masked where the first token is, and MEAN pools every position).
- `pooling`: cls | mean | first (no CLS: the first position, LRA's dual encoder for Retrieval).

Shared state across layers (optional hook): a mixer class that defines
`build_shared(**mixer_kwargs) -> nn.Module` gets one such module for the whole encoder, built
with the same keyword arguments as its mixers. The encoder calls it once per forward and passes
what it returns (a dict) to every layer's mixer as keyword arguments: DeBERTa's relative-position
table E, LayerNorm-ed once and read by all layers. Mixers without the hook (baseline, IGLOO) are
called as `mixer(x, mask)`, unchanged. The shared module counts among `mixers()`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lra.models.init import check_init, init_blocks_lra_
from lra.registry import MIXERS

PAD_ID = 0


def sinusoidal_table(n: int, d: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...); shape [n, d]."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table


def mixer_factory(
    name: str, options: dict[str, Any], init: str = "torch", **dims: Any
) -> tuple[nn.Module | None, Callable[[], nn.Module]]:
    """The shared module of mixer `name` (its `build_shared` hook; None without one) and a
    function that builds one mixer, both as the mixer contract says (lra/models/attention/
    __init__.py): `Mixer(d_model=, num_heads=, qkv_dim=, attn_dropout=, max_len=, **options)`, and
    `mask_queries=True` where `dims` asks for it. An option `bias: null` becomes what `init` gives: lra none, torch biased."""
    mixer_cls = MIXERS.get(name)
    clash = sorted(dims.keys() & options.keys())
    if clash:  # the encoder's widths come from the task (and are what matching turns)
        raise ValueError(
            f"model.mixer.{clash[0]} is set, but the encoder gives every mixer its {clash[0]}: "
            f"set task.encoder.{clash[0]} instead (or model.encoder.{clash[0]})"
        )
    kwargs = {**dims, **options}
    if "bias" in kwargs and kwargs["bias"] is None:  # LRA's attention has no biases
        kwargs["bias"] = init == "torch"
    if kwargs.pop("mask_queries", False):  # asked for only where padding is LRA's
        if "mask_queries" not in inspect.signature(mixer_cls).parameters:
            raise ValueError(
                f"task.encoder.padding=lra masks padded queries as LRA's attention, but mixer "
                f"'{name}' takes no mask_queries: give it one (the mixer contract, lra/models/"
                "attention/__init__.py) or set task.encoder.padding=real"
            )
        kwargs["mask_queries"] = True
    build_shared = getattr(mixer_cls, "build_shared", None)
    shared = build_shared(**kwargs) if build_shared else None
    return shared, lambda: mixer_cls(**kwargs)


class MLP(nn.Sequential):
    def __init__(self, d_model: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, d_model)
        )


class Block(nn.Module):
    """x = x + drop(mixer(LN(x))); x = x + drop(MLP(LN(x)))."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, **shared: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.mixer(self.norm1(x), mask, **shared))
        return x + self.drop(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """Maps token ids [B, n] to one pooled vector per sequence [B, d_model]."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        qkv_dim: int,
        mlp_dim: int,
        dropout: float,
        attn_dropout: float,
        pos_emb: str,
        pooling: str,
        mixer: str,
        mixer_options: dict[str, Any] | None = None,
        padded: bool = True,
        init: str = "lra",
        cls_position: bool = True,
        padding: str = "real",
    ) -> None:
        super().__init__()
        if pos_emb not in ("sinusoidal", "learned", "none"):
            raise ValueError(f"pos_emb must be sinusoidal, learned or none, not '{pos_emb}'")
        if pooling not in ("cls", "mean", "first"):
            raise ValueError(f"pooling must be cls, mean or first, not '{pooling}'")
        if padding not in ("real", "lra"):
            raise ValueError(
                f"task.encoder.padding must be real or lra (LRA's code), not '{padding}'"
            )
        check_init(init)
        self.max_len = max_len
        self.pooling = pooling
        self.padded = padded  # False: no batch holds token 0, so mixers get no mask
        self.lra_padding = padding == "lra"
        cls = pooling == "cls"
        self.cls_position = cls and cls_position  # positions 0..n: the CLS at 0
        self.embed = nn.Embedding(
            vocab_size, d_model, padding_idx=None if self.lra_padding else PAD_ID
        )
        positions = max_len + self.cls_position
        if pos_emb == "learned":
            self.pos = nn.Parameter(torch.randn(positions, d_model) * 0.02)
        elif pos_emb == "sinusoidal":
            self.register_buffer("pos", sinusoidal_table(positions, d_model), persistent=False)
        else:
            self.pos = None
        self.cls = None
        if cls:  # LRA's code: zeros; PyTorch-style: N(0, 0.02)
            self.cls = nn.Parameter(
                torch.zeros(1, 1, d_model) if init == "lra" else torch.randn(1, 1, d_model) * 0.02
            )
        self.drop = nn.Dropout(dropout)
        self.shared, make_mixer = mixer_factory(
            mixer, mixer_options or {}, init=init, d_model=d_model, num_heads=num_heads,
            qkv_dim=qkv_dim, attn_dropout=attn_dropout, max_len=max_len + cls,
            mask_queries=self.lra_padding,
        )  # fmt: skip
        self.blocks = nn.ModuleList(
            Block(make_mixer(), d_model, mlp_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        if init == "lra":
            init_blocks_lra_(self.blocks)

    def mixers(self) -> list[nn.Module]:
        """The token mixer's modules: one per block, plus the shared module if there is one."""
        return [block.mixer for block in self.blocks] + (
            [self.shared] if self.shared is not None else []
        )

    def states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every position's final state [B, n (+1 with a CLS first), D], and the mask the mixers
        got (None where the batches hold no padding)."""
        B, n = tokens.shape
        if n > self.max_len:
            raise ValueError(f"sequence of {n} tokens exceeds the encoder's max_len={self.max_len}")
        mask = tokens != PAD_ID if self.padded else None  # [B, n]
        x = self.embed(tokens)  # [B, n, D]
        if self.pos is not None and not self.cls_position:
            x = x + self.pos[:n]
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)
            if mask is not None:  # LRA's code masks the CLS where the first token is padding
                first = mask[:, :1] if self.lra_padding else mask.new_ones(B, 1)
                mask = torch.cat([first, mask], dim=1)
        if self.pos is not None and self.cls_position:
            x = x + self.pos[: n + 1]  # the CLS at position 0, the tokens at 1..n
        x = self.drop(x)
        shared = self.shared() if self.shared is not None else {}
        for block in self.blocks:
            x = block(x, mask, **shared)
        return self.norm(x), mask

    def token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final state of each token [B, n, D] (the CLS left out): what a token-level
        objective (lra.pretraining) predicts from."""
        x, _ = self.states(tokens)
        return x[:, 1:] if self.cls is not None else x

    def pool(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`states` pooled to one vector per sequence [B, D], as `pooling` says."""
        if self.pooling in ("cls", "first"):
            return x[:, 0]
        if mask is None or self.lra_padding:  # LRA's code: MEAN over every position
            return x.mean(1)
        m = mask.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.states(tokens))
