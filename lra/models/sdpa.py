"""`F.scaled_dot_product_attention` that keeps its memory bounded on CPU with dropout.

On GPU, and on CPU without dropout, PyTorch's fused kernels never store the [B, h, n, n]
probabilities. On CPU *with* attention dropout it falls back to the math kernel, which keeps them
for backward: 16 GB per layer at LRA ListOps' batch 32, 8 heads and n = 2001. There we attend in
query chunks under activation checkpointing (the chunk's probabilities are recomputed in backward,
with the same dropout mask since checkpointing restores the RNG state), so memory is
O(B·h·chunk·n) and the result is the same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_BYTES = 1 << 28  # fp32 scores held per query chunk: 256 MiB


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [B, h, n, d], k/v: [B, h, m, d], attn_mask broadcastable to [B, h, n, m] -> [B, h, n, d]."""
    B, h, n, _ = q.shape
    m = k.shape[-2]
    chunk = max(1, CHUNK_BYTES // (4 * B * h * m))
    if dropout_p == 0.0 or q.is_cuda or not torch.is_grad_enabled() or chunk >= n:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale
        )
    out = []
    for s in range(0, n, chunk):
        mask = attn_mask
        if mask is not None and mask.shape[-2] != 1:
            mask = mask[..., s : s + chunk, :]
        out.append(
            checkpoint(
                F.scaled_dot_product_attention,
                q[..., s : s + chunk, :],
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout_p,
                scale=scale,
                use_reentrant=False,
            )
        )
    return torch.cat(out, dim=-2)
