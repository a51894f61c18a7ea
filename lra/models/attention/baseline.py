"""Softmax multi-head attention (Vaswani et al. 2017), the reference mixer.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + mask) V

Runs through `F.scaled_dot_product_attention` (flash or memory-efficient kernels on GPU; see
`lra.models.sdpa` for CPU with dropout); padding keys are masked out, and with `mask_queries`
(`task.encoder.padding: lra`) padded queries too, as LRA's Flax attention does.
"""

from __future__ import annotations

import torch
from torch import nn

from lra.models.sdpa import attend, uniform_padded_queries
from lra.registry import MIXERS


@MIXERS.register("baseline")
class SoftmaxAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_dim: int,
        attn_dropout: float = 0.0,
        max_len: int | None = None,
        mask_queries: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if qkv_dim % num_heads:
            raise ValueError(f"qkv_dim={qkv_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.mask_queries = mask_queries
        self.qkv = nn.Linear(d_model, 3 * qkv_dim, bias=bias)
        self.qkv.fused = 3  # W_q, W_k, W_v: each initialised with its own fans (lra/models/init.py)
        self.out = nn.Linear(qkv_dim, d_model, bias=bias)
        self.attn_dropout = attn_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, n, _ = x.shape
        # q, k, v: [B, h, n, d_head]
        q, k, v = self.qkv(x).view(B, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        keep = mask[:, None, None, :] if mask is not None else None  # [B, 1, 1, n]: True = key
        o = attend(q, k, v, attn_mask=keep, dropout_p=self.attn_dropout if self.training else 0.0)
        if self.mask_queries:
            o = uniform_padded_queries(o, v, mask)
        return self.out(o.transpose(1, 2).reshape(B, n, -1))
