"""The original LRA IGLOO model (redna11/lra-igloo: `IGLOO1D_BLOCK` with the v1 kernel), rebuilt
so that its published numbers can be checked at matched parameters. A whole network, not a mixer:
`model=igloo_lra` replaces the shared encoder and LRA's head (the task's `encoder` block is unused
except for `max_len`).

    tokens [B, n] -> right-padded to max_len (n is fixed, as lra-igloo's `cutoff`)
    X = Embedding(tokens) [n, E], or the token's value / value_scale as one channel (CIFAR)
    for s = 1..stacks:  H_s = SpatialDropout(LeakyReLU_0.1(Conv1d_k(H_{s-1}))), H_0 = X   [n, K]
    kernels read H_1 and, when stacks > 1, H_stacks (lra-igloo's loop: two kernels for any
    stacks > 1); each kernel has its own table patches [P, ps]: ps sorted distinct timesteps
    drawn uniformly over the whole sequence
        H' = H W_in                                                    [n, d'] (d' = K if no W_in)
        z_p = Σ_l Σ_c W_mult[p, l, c] · W_sum[l, c] · H'[patches[p, l], c] + bias[p]     [P]
        features = LeakyReLU_0.1(z)                                                      [P]
        transformer_style: a = softmax_t(z W_qk) over the n/r max-pooled positions,
                           features = a · MaxPool_r(H W_v)                               [K]
    concatenated over kernels -> (BatchNorm) -> Dropout -> Dense(num_classes)

Parameters per kernel: P·ps·d' + ps·d' + P (+ K·d' with an input projection), plus K² + P·(n/r)
with transformer_style; plus the convs, the embedding and the head. lra-igloo's CIFAR settings
(P=4000, K=5, conv kernel 1, ps=4, BatchNorm, Dense(10), grey pixels as one channel) give
132,040 trainable parameters. Not reproduced: lra-igloo's L2 penalties (the task's AdamW weight
decay applies instead) and Keras' exact Glorot fan computation for the 3-d weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lra.models.classifier import PairHead, SequenceClassifier, TwoTowerClassifier
from lra.models.encoder import PAD_ID
from lra.registry import ARCHITECTURES


def patch_table(n: int, P: int, ps: int, g: torch.Generator) -> torch.Tensor:
    """[P, ps]: each row ps distinct timesteps of [0, n), uniform, sorted (lra-igloo's table)."""
    if torch.get_default_device().type == "meta":  # counting parameters: the table is not needed
        return torch.empty(P, ps, dtype=torch.long)
    return torch.rand(P, n, generator=g).topk(ps, dim=-1).indices.sort(dim=-1).values


def glorot(*shape: int, fan_in: int, fan_out: int) -> nn.Parameter:
    limit = math.sqrt(6 / (fan_in + fan_out))
    return nn.Parameter(torch.empty(shape).uniform_(-limit, limit))


class IglooKernel(nn.Module):
    """lra-igloo's `IGLOO1D_KERNEL` (v1): [B, n, K] -> [B, P] (or [B, K] with transformer_style)."""

    def __init__(
        self,
        n: int,
        K: int,
        P: int,
        ps: int,
        incoming_proj: int,
        transformer_style: bool,
        pooling_size: int,
        g: torch.Generator,
    ) -> None:
        super().__init__()
        d = incoming_proj or K  # d'
        self.register_buffer("patches", patch_table(n, P, ps, g))  # [P, ps]
        self.W_in = glorot(K, d, fan_in=K, fan_out=d) if incoming_proj else None
        self.W_mult = glorot(P, ps, d, fan_in=ps * d, fan_out=P)
        self.W_sum = glorot(ps, d, fan_in=ps * d, fan_out=1)  # lra-igloo's W_SUMMER [ps·d', 1]
        self.bias = glorot(P, fan_in=1, fan_out=P)
        self.transformer_style = transformer_style
        self.pooling_size = pooling_size
        if transformer_style:
            self.W_qk = glorot(P, n // pooling_size, fan_in=P, fan_out=n // pooling_size)
            self.W_v = glorot(K, K, fan_in=K, fan_out=K)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        Hp = H if self.W_in is None else H @ self.W_in  # H' [B, n, d']
        # z_p = Σ_l Σ_c W_mult[p, l, c] W_sum[l, c] H'[patches[p, l], c] + bias[p]     [B, P]
        z = torch.einsum("bplc,plc->bp", Hp[:, self.patches], self.W_mult * self.W_sum) + self.bias
        if not self.transformer_style:
            return F.leaky_relu(z, 0.1)
        V = F.max_pool1d((H @ self.W_v).transpose(1, 2), self.pooling_size).transpose(1, 2)
        a = (z @ self.W_qk).softmax(dim=-1)  # [B, n/r]: attention over pooled positions
        return torch.einsum("bt,btk->bk", a, V)  # [B, K]


class IglooLRAEncoder(nn.Module):
    """tokens [B, n] -> the concatenated kernel features [B, features]."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        embedding_dim: int | None,
        value_scale: float,
        conv_filters: int,
        conv_kernel: int,
        padding: str,
        num_patches: int,
        patch_size: int,
        stacks: int,
        incoming_proj: int,
        transformer_style: bool,
        pooling_size: int,
        dropout: float,
        seed: int | None,
    ) -> None:
        super().__init__()
        if padding not in ("causal", "same"):
            raise ValueError(f"igloo_lra: padding must be causal or same, not '{padding}'")
        if not 1 <= patch_size <= max_len:
            raise ValueError(
                f"igloo_lra: patch_size={patch_size} must be in [1, max_len={max_len}]"
            )
        self.max_len = max_len
        self.value_scale = value_scale
        # embedding_dim null: the token's value as one real channel (lra-igloo's grey pixels / 255)
        self.embed = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        k = conv_kernel
        self.pad = (k - 1, 0) if padding == "causal" else ((k - 1) // 2, k // 2)
        widths = [embedding_dim or 1] + [conv_filters] * stacks
        self.convs = nn.ModuleList(nn.Conv1d(a, b, k) for a, b in zip(widths, widths[1:]))
        self.drop = nn.Dropout1d(dropout)  # Keras' SpatialDropout1D: whole channels
        self.reads = sorted({0, stacks - 1})  # which H_s the kernels read
        if seed is None:
            seed = 0 if torch.get_default_device().type == "meta" else int(torch.randint(2**62, ()))
        g = torch.Generator().manual_seed(seed)
        self.kernels = nn.ModuleList(
            IglooKernel(
                max_len,
                conv_filters,
                num_patches,
                patch_size,
                incoming_proj,
                transformer_style,
                pooling_size,
                g,
            )  # fmt: skip
            for _ in self.reads
        )
        self.features = len(self.reads) * (conv_filters if transformer_style else num_patches)

    def mixers(self) -> list[nn.Module]:
        """What mixes positions: the convs and the IGLOO kernels."""
        return [*self.convs, *self.kernels]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence of {n} tokens exceeds igloo_lra's max_len={self.max_len}")
        tokens = F.pad(tokens, (0, self.max_len - n), value=PAD_ID)
        if self.embed is None:
            X = tokens[..., None].float() / self.value_scale  # [B, n, 1]
        else:
            X = self.embed(tokens)  # [B, n, E]
        h = X.transpose(1, 2)  # channels first for Conv1d: [B, C, n]
        Hs = []
        for conv in self.convs:
            h = self.drop(F.leaky_relu(conv(F.pad(h, self.pad)), 0.1))
            Hs.append(h.transpose(1, 2))  # H_s [B, n, K]
        return torch.cat([kernel(Hs[s]) for kernel, s in zip(self.kernels, self.reads)], dim=-1)


HEAD_NORMS = {"batchnorm": nn.BatchNorm1d, "none": lambda features: nn.Identity()}


class IglooLRAHead(nn.Sequential):
    """lra-igloo's head: (BatchNorm) -> Dropout -> Dense(num_classes) (softmax is in the loss)."""

    def __init__(self, features: int, num_classes: int, norm: str, dropout: float) -> None:
        if norm not in HEAD_NORMS:
            raise ValueError(f"igloo_lra: head_norm='{norm}' is not one of {', '.join(HEAD_NORMS)}")
        super().__init__(
            HEAD_NORMS[norm](features), nn.Dropout(dropout), nn.Linear(features, num_classes)
        )


@ARCHITECTURES.register("igloo_lra")
def build_igloo_lra(
    model_cfg: dict[str, Any],
    encoder_cfg: dict[str, Any],
    vocab_size: int,
    num_classes: int,
    head: str = "single",
    interaction: str = "nli",
) -> nn.Module:
    """`model.net` holds the options; of the task's encoder block only `max_len` is used (and
    `mlp_dim` for the two-tower head of Retrieval: LRA's head over one shared encoder, where
    lra-igloo's own Retrieval model, longrangearena_matching.py, has two unshared towers)."""
    net = dict(model_cfg["net"])
    head_norm, head_dropout = net.pop("head_norm"), net.pop("head_dropout")
    encoder = IglooLRAEncoder(vocab_size=vocab_size, max_len=encoder_cfg["max_len"], **net)
    if head == "dual":
        pair = PairHead(encoder.features, encoder_cfg["mlp_dim"], num_classes, interaction)
        return TwoTowerClassifier(encoder, pair)
    return SequenceClassifier(
        encoder, IglooLRAHead(encoder.features, num_classes, head_norm, head_dropout)
    )
