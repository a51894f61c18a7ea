"""`F.scaled_dot_product_attention` that keeps its memory bounded on CPU with dropout.

On GPU, and on CPU without dropout, PyTorch's fused kernels never store the [B, h, n, n]
probabilities. On CPU *with* attention dropout it falls back to the math kernel, which keeps them
for backward: 16 GB per layer at LRA ListOps' batch 32, 8 heads and n = 2001. Where they would not
fit in the memory actually free (`needs_chunks`), we attend in query chunks under activation
checkpointing (the chunk's probabilities are recomputed in backward, with the same dropout mask
since checkpointing restores the RNG state), so memory is O(B·h·chunk·n) and the result is the
same function. Elsewhere the recomputation would only cost time (baseline at n = 4096 ran 1.4x
slower than a stack of nn.TransformerEncoderLayer when it chunked above 256 MiB of scores).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_BYTES = 1 << 28  # fp32 scores held per query chunk, when chunking: 256 MiB
# the math kernel with dropout holds about this many [B, h, n, m] fp32 tensors per layer until
# backward (scores, probabilities, the dropped probabilities)
HELD_COPIES = 3
# the share of free memory one layer's attention may hold: a model holds every layer's at once
LAYER_SHARE = 1 / 8


def available_bytes() -> int:
    """Memory free for this process now: Linux's MemAvailable, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def needs_chunks(B: int, h: int, n: int, m: int) -> bool:
    """Would the unchunked math kernel's held tensors [B, h, n, m] overrun this layer's share?"""
    return HELD_COPIES * 4 * B * h * n * m > LAYER_SHARE * available_bytes()


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
    plain = dropout_p == 0.0 or q.is_cuda or not torch.is_grad_enabled()
    chunk = max(1, CHUNK_BYTES // (4 * B * h * m))
    if plain or chunk >= n or not needs_chunks(B, h, n, m):
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


def uniform_padded_queries(o: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """LRA's Flax attention masks padded queries as well as padded keys, with a -1e10 bias: a
    padded query's logits are then all equal (float32 cannot hold s - 1e10 apart from -1e10), so it
    attends uniformly to every position, padding included: o_i = mean_j v_j (attention dropout
    aside). o, v: [B, h, n, d], mask: [B, n] (True on real tokens) or None (no padding)."""
    if mask is None:
        return o
    return torch.where(mask[:, None, :, None], o, v.mean(-2, keepdim=True))
