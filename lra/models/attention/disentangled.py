"""Disentangled attention (DeBERTa, He et al. 2020, arXiv 2006.03654), as DeBERTa-v2/v3's code has it.

For one head of size d: content Q = X W_q + b_q, K = X W_k + b_k, V = X W_v + b_v; one table
E [2k, D] of relative-position embeddings for the whole encoder (`RelativeEmbeddings`, built by
the encoder's shared-module hook, LayerNorm-ed once per forward) gives position keys and queries
PK = E W_pk + b_pk and PQ = E W_pq + b_pq, or with `share_att_key` (DeBERTa-v3) the content
projections again: PK = E W_k + b_k, PQ = E W_q + b_q.

    R(i, j) = i - j                        query minus key; log-bucketed if position_buckets > 0
    c(i, j) = clamp(R(i, j) + k, 0, 2k-1)   row of E; k = position_buckets or max_relative_positions
    A[i, j] = ( Q_i.K_j  +  Q_i.PK[c(i,j)]  +  K_j.PQ[c(i,j)] ) / sqrt(d * sf)
                 c2c         c2p               p2c             sf = 1 + number of position terms
    out     = dropout(softmax(A + padding mask)) V W_o

The paper writes p2c with delta(j, i). The published code, and so every released checkpoint,
indexes both position terms with the same c(i, j) (for p2c it gathers at -R(j, i) + k, which is
R(i, j) + k because the bucketing is odd). We follow the code.

The position terms need only two small tables per head, s = 1 / sqrt(d * sf) folded in:
C2P = s Q PK^T [n, 2k] and P2CT = s PQ K^T [2k, n]; then c2p[i, j] = C2P[i, c(i,j)] and
p2c[i, j] = P2CT[c(i,j), j]. Three ways to finish, picked by `impl`:
- "eager": the equations on [B, h, n, n] tensors, with autograd: the reference.
- "sdpa": both terms gathered into an additive bias for SDPA's kernels, a block of query rows at a
  time (the bias block [B, h, rows, n] is built, used and dropped, and built again in backward), so
  memory is O(B h rows n), never O(B h n^2): on CPU without dropout the flash kernel, with the
  bias gradient computed here (FlashWithBias); elsewhere SDPA on each block (CUDA: the
  memory-efficient kernel, which differentiates the bias), the block's dropout mask replayed in
  backward from its saved RNG state (BlockedSDPA).
- "flex": FlexAttention reads both tables in `score_mod`, so no [n, n] tensor is stored
  (CUDA, compiled; no attention dropout).
"auto" is "flex" where the CUDA flex kernel serves the shape (`choose_impl`), else "sdpa"; the choice
is logged once per run and mode.
Not modelled: DeBERTa's dropout on E (`pos_dropout`), which is no part of the equations.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lra.models.sdpa import uniform_padded_queries
from lra.registry import MIXERS

log = logging.getLogger(__name__)

POSITION_TERMS = ("c2p", "p2c")
IMPLS = ("auto", "eager", "sdpa", "flex")
FLEX_MIN_HEAD = 16  # the CUDA flex kernel (Triton's tl.dot) takes head sizes >= 16 only
# the sdpa path works on blocks of query rows of about this many scores [B*h, rows, n]
BLOCK_SCORES = {"cpu": 2**22, "cuda": 2**26}  # 16 MiB, 256 MiB of fp32
# SDPA's CPU flash kernel, called directly so that the bias need not require grad (FlashWithBias)
FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def choose_impl(impl: str, device: str, head_dim: int, dropout: float) -> str:
    """What `impl` runs as on `device` ("cuda", "cpu", ...) at this head size and attention dropout
    (0 in eval): "auto" is "flex" only where the compiled CUDA kernel serves (CUDA, no dropout,
    head size >= FLEX_MIN_HEAD), else "sdpa". An explicit "flex" it cannot serve is an error."""
    if impl == "flex":
        if dropout > 0:
            raise ValueError("impl=flex has no attention dropout: set attn_dropout=0 or impl=sdpa")
        if device == "cuda" and head_dim < FLEX_MIN_HEAD:
            raise ValueError(
                f"impl=flex: the CUDA flex kernel needs a head size >= {FLEX_MIN_HEAD}, this one "
                f"is {head_dim} (qkv_dim / num_heads): use impl=auto or impl=sdpa"
            )
        return impl
    if impl != "auto":
        return impl
    flex = device == "cuda" and dropout == 0 and head_dim >= FLEX_MIN_HEAD
    return "flex" if flex else "sdpa"


_announced: set[tuple] = set()


def announce(impl: str, chosen: str, device: str, head_dim: int, dropout: float, training: bool):
    """Log the implementation once per process (a run) for each distinct choice."""
    key = (impl, chosen, device, head_dim, dropout, training)
    if key not in _announced:
        _announced.add(key)
        log.info(
            "disentangled attention (%s): impl=%s runs %s on %s (head size %d, dropout %g)",
            "training" if training else "eval", impl, chosen, device, head_dim, dropout,
        )  # fmt: skip


def relative_span(
    max_len: int | None, position_buckets: int, max_relative_positions: int | None
) -> tuple[int, int, int]:
    """(k, buckets, max_position): E has 2k rows; max_relative_positions defaults to max_len."""
    max_position = max_relative_positions or max_len
    if not max_position or max_position < 1:
        raise ValueError(
            "disentangled attention needs max_relative_positions >= 1 (or the encoder's max_len)"
        )
    if position_buckets > 0:
        if position_buckets < 2:
            raise ValueError(f"position_buckets={position_buckets}: use 0 (off) or >= 2")
        return position_buckets, position_buckets, max_position
    return max_position, 0, max_position


def log_bucket(r: torch.Tensor, buckets: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v2's `make_log_bucket_position`: |r| <= mid = buckets/2 keeps r; beyond,
    sign(r) * (mid + ceil(ln(|r|/mid) / ln((max_position-1)/mid) * (mid-1)))."""
    mid = buckets // 2
    far = r.abs().clamp_min(mid)  # the log is only used where |r| > mid
    # float32 logs, as the published code: ceil() must land on the same side at |r| = max_position-1
    log_r = torch.ceil(
        torch.log(far / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)
    )
    return torch.where(r.abs() <= mid, r, (torch.sign(r) * (log_r + mid)).long())


def relative_index(n: int, k: int, buckets: int, max_position: int) -> torch.Tensor:
    """T[R + n - 1] = c for each offset R = i - j in [-(n-1), n-1]: [2n - 1], non-decreasing."""
    r = torch.arange(-(n - 1), n)
    if buckets > 0:
        r = log_bucket(r, buckets, max_position)
    return (r + k).clamp(0, 2 * k - 1)


@functools.lru_cache(maxsize=64)
def relative_rows(
    n: int, k: int, buckets: int, max_position: int, device: torch.device
) -> tuple[slice, torch.Tensor]:
    """(rows, T): the rows of E a sequence of length n reads (c is non-decreasing in the offset,
    so they are E[rows], contiguous) and T - rows.start on `device`. Made once per (n, device),
    so a forward does no host work and no host-to-device copy: every layer reads the cached T."""
    with torch.device("cpu"):  # host work, also where the network is built on meta (counting)
        T = relative_index(n, k, buckets, max_position)
    lo, hi = int(T[0]), int(T[-1])
    return slice(lo, hi + 1), (T - lo).to(device)


class RelativeEmbeddings(nn.Module):
    """E [2k, D], one table for the whole encoder, LayerNorm-ed once per forward when
    `layer_norm` (DeBERTa-v2's norm_rel_ebd="layer_norm"); every layer receives the same E."""

    def __init__(self, d_model: int, k: int, layer_norm: bool) -> None:
        super().__init__()
        self.E = nn.Parameter(torch.randn(2 * k, d_model) * 0.02)  # DeBERTa's init, std 0.02
        # DeBERTa's eps: E's rows are small at init, where eps 1e-5 would damp the normalisation
        self.norm = nn.LayerNorm(d_model, eps=1e-7) if layer_norm else nn.Identity()

    def forward(self) -> dict[str, torch.Tensor]:
        return {"rel_embeddings": self.norm(self.E)}


@MIXERS.register("disentangled")
class DisentangledAttention(nn.Module):
    """DeBERTa's attention as `mixer(x, mask, rel_embeddings)`; E comes from `build_shared`."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_dim: int,
        attn_dropout: float = 0.0,
        max_len: int | None = None,
        mask_queries: bool = False,
        pos_att_type: Sequence[str] = POSITION_TERMS,
        share_att_key: bool = True,
        position_buckets: int = 256,
        max_relative_positions: int | None = None,
        rel_layer_norm: bool = True,  # used by build_shared: LayerNorm on E
        bias: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if qkv_dim % num_heads:
            raise ValueError(f"qkv_dim={qkv_dim} is not divisible by num_heads={num_heads}")
        unknown = set(pos_att_type) - set(POSITION_TERMS)
        if unknown:
            raise ValueError(f"pos_att_type {sorted(unknown)} unknown: use a subset of [c2p, p2c]")
        if impl not in IMPLS:
            raise ValueError(f"impl='{impl}' unknown: use one of {', '.join(IMPLS)}")
        self.k, self.buckets, self.max_position = relative_span(
            max_len, position_buckets, max_relative_positions
        )
        self.h, self.d = num_heads, qkv_dim // num_heads
        self.c2p, self.p2c = "c2p" in pos_att_type, "p2c" in pos_att_type
        self.scale = 1 / math.sqrt(self.d * (1 + self.c2p + self.p2c))  # s = 1 / sqrt(d * sf)
        self.dropout = attn_dropout
        self.mask_queries = mask_queries  # padded queries attend uniformly, as LRA's attention
        self.impl = impl
        self.q_proj = nn.Linear(d_model, qkv_dim, bias=bias)  # W_q, b_q
        self.k_proj = nn.Linear(d_model, qkv_dim, bias=bias)  # W_k, b_k
        self.v_proj = nn.Linear(d_model, qkv_dim, bias=bias)  # W_v, b_v
        self.pos_k_proj = self.pos_q_proj = None  # shared: PK, PQ from W_k, W_q
        if not share_att_key:
            if self.c2p:
                self.pos_k_proj = nn.Linear(d_model, qkv_dim, bias=bias)  # W_pk, b_pk
            if self.p2c:
                self.pos_q_proj = nn.Linear(d_model, qkv_dim, bias=bias)  # W_pq, b_pq
        self.out = nn.Linear(qkv_dim, d_model, bias=bias)  # W_o

    @classmethod
    def build_shared(
        cls,
        d_model: int,
        max_len: int | None = None,
        position_buckets: int = 256,
        max_relative_positions: int | None = None,
        rel_layer_norm: bool = True,
        **_: object,
    ) -> RelativeEmbeddings:
        """The encoder's hook: one E for all layers (the other mixer options are not its own)."""
        k, _, _ = relative_span(max_len, position_buckets, max_relative_positions)
        return RelativeEmbeddings(d_model, k, rel_layer_norm)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        """[..., m, h*d] -> [..., h, m, d]."""
        return t.unflatten(-1, (self.h, self.d)).transpose(-2, -3)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, rel_embeddings: torch.Tensor
    ) -> torch.Tensor:
        B, n, _ = x.shape
        s = self.scale
        Q = self.heads(self.q_proj(x))  # [B, h, n, d]
        K = self.heads(self.k_proj(x))  # [B, h, n, d]
        V = self.heads(self.v_proj(x))  # [B, h, n, d]
        # T [2n-1]: c by offset, into E[rows] (short sequences reach few rows of E)
        rows, T = relative_rows(n, self.k, self.buckets, self.max_position, x.device)
        E = rel_embeddings[rows]  # [<= 2k, D]
        # position keys and queries [h, 2k, d], s folded in (None when the term is off)
        PK = s * self.heads((self.pos_k_proj or self.k_proj)(E)) if self.c2p else None
        PQ = s * self.heads((self.pos_q_proj or self.q_proj)(E)) if self.p2c else None
        dropout = self.dropout if self.training else 0.0
        impl = choose_impl(self.impl, x.device.type, self.d, dropout)
        announce(self.impl, impl, x.device.type, self.d, dropout, self.training)
        if impl == "sdpa":  # the tables are made a block at a time inside
            bias = padding_bias(mask, B, n, Q)
            O = attend_sdpa(Q, K, V, PK, PQ, T, bias, s, dropout)
        else:
            C2P = Q @ PK.transpose(-1, -2) if PK is not None else None  # [B, h, n, 2k]: s Q_i.PK[c]
            P2CT = PQ @ K.transpose(-1, -2) if PQ is not None else None  # [B, h, 2k, n]: s K_j.PQ[c]
            if impl == "flex":
                O = attend_flex(Q, K, V, C2P, P2CT, T, mask, s)
            else:
                O = attend_eager(Q, K, V, C2P, P2CT, T, padding_bias(mask, B, n, Q), s, dropout)
        if self.mask_queries:
            O = uniform_padded_queries(O, V, mask)
        return self.out(O.transpose(1, 2).reshape(B, n, -1))


def padding_bias(mask: torch.Tensor | None, B: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """[B, 1, 1, n]: 0 on real keys, the dtype's lowest value on padding keys."""
    bias = torch.zeros(B, 1, 1, n, device=like.device, dtype=like.dtype)
    if mask is not None:
        bias.masked_fill_(~mask[:, None, None, :], torch.finfo(like.dtype).min)
    return bias


# --- eager: the reference ---------------------------------------------------------------------


def logits(Q, K, C2P, P2CT, T, bias, s: float) -> torch.Tensor:
    """A + padding bias [B, h, n, n]. Q, K: [B, h, n, d]; C2P: [B, h, n, 2k]; P2CT: [B, h, 2k, n]
    (None when the term is off); T: relative_index; bias: [B, 1, 1, n]."""
    B, h, n, _ = K.shape
    i = torch.arange(n, device=T.device)
    c = T[i[:, None] - i[None, :] + n - 1].expand(B, h, n, n)  # c(i, j)
    A = (Q @ K.transpose(-1, -2)).mul_(s)  # c2c: s Q_i.K_j
    if C2P is not None:
        A += C2P.gather(-1, c)  # c2p: C2P[i, c(i, j)] = s Q_i.PK[c(i, j)]
    if P2CT is not None:
        A += P2CT.gather(-2, c)  # p2c: P2CT[c(i, j), j] = s K_j.PQ[c(i, j)]
    return A + bias


def attend_eager(Q, K, V, C2P, P2CT, T, bias, s: float, dropout: float) -> torch.Tensor:
    """dropout(softmax(A)) V with the whole [B, h, n, n] matrix; autograd does the backward."""
    P = torch.softmax(logits(Q, K, C2P, P2CT, T, bias, s), dim=-1)
    return F.dropout(P, dropout, training=dropout > 0) @ V


# --- sdpa: one gathered bias for SDPA's kernels -----------------------------------------------


def attend_sdpa(Q, K, V, PK, PQ, T, bias, s: float, dropout: float) -> torch.Tensor:
    """scaled_dot_product_attention(Q, K, V, Bias, scale=s) with Bias = c2p + p2c + padding, a
    block of query rows at a time (BiasedAttention): on CPU without dropout SDPA's flash kernel,
    otherwise SDPA's kernels with autograd on each block."""
    flash = Q.device.type == "cpu" and dropout == 0 and FLASH_CPU is not None
    return BiasedAttention.apply(Q, K, V, PK, PQ, T, bias, s, dropout, flash)


ALIGN = 16  # bias rows padded to a multiple of 16 elements: SDPA would copy an unaligned bias


def block_index(
    W: torch.Tensor, rows: slice, k2: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where c2p and p2c read, for i in rows: (i - rows.start) * 2k + c(i, j) in C2P[:, :, rows]
    flattened to [rows * 2k], and c(i, j) * n + j in P2CT flattened to [2k * n], as [rows, width]
    (width >= n: the columns past n read entry 0, and are cut off by the caller's view). (Flat
    gathers and scatters run several times faster than 4-d ones.) W = T.flip(0).unfold(0, n, 1):
    W[n-1-i, j] = c(i, j)."""
    n = W.shape[1]
    i = torch.arange(rows.start, rows.stop, device=W.device)
    c = W.index_select(0, n - 1 - i)  # [rows, n]: c(i, j)
    at_c2p = torch.add(c, (i - rows.start)[:, None], alpha=k2)
    at_p2c = torch.add(torch.arange(n, device=W.device), c, alpha=n)
    if width is not None and width > n:
        at_c2p, at_p2c = (F.pad(at, (0, width - n)) for at in (at_c2p, at_p2c))
    return at_c2p, at_p2c


def position_bias(C2P, P2CT, bias, W, rows: slice) -> torch.Tensor:
    """Bias[i, j] = C2P[i, c(i,j)] + P2CT[c(i,j), j] + bias[j] for i in rows: [B, h, rows, n], a
    view of rows padded to a multiple of ALIGN. C2P: this block's rows [B, h, rows, 2k]; P2CT:
    [B, h, 2k, n]; bias: [B, 1, 1, n]."""
    B, n, r = bias.shape[0], W.shape[1], rows.stop - rows.start
    width = -(-n // ALIGN) * ALIGN
    at_c2p, at_p2c = block_index(W, rows, C2P.shape[-1] if C2P is not None else 0, width)
    A = bias.expand(-1, -1, r, -1)  # [B, 1, rows, n]: padding keys
    for table, at in ((C2P, at_c2p), (P2CT, at_p2c)):
        if table is not None:
            h = table.shape[1]
            term = table.reshape(B * h, -1).gather(-1, at.view(1, -1).expand(B * h, -1))
            A = term.view(B, h, r, width)[..., :n].add_(A)
    return A


def add_bias_grad(dC2P, dP2CT, dBias, W, rows: slice) -> None:
    """The gathers' backward for one block: dC2P[i, c(i,j)] += dBias[i, j] (dC2P: this block's
    rows [B, h, rows, 2k]) and dP2CT[c(i,j), j] += dBias[i, j] (dBias: [B*h, rows * n])."""
    at_c2p, at_p2c = block_index(W, rows, dC2P.shape[-1] if dC2P is not None else 0)
    Bh = dBias.shape[0]
    for table, at in ((dC2P, at_c2p), (dP2CT, at_p2c)):
        if table is not None:
            table.view(Bh, -1).scatter_add_(-1, at.view(1, -1).expand(Bh, -1), dBias)


def row_blocks(heads: int, n: int, device: torch.device) -> list[slice]:
    """Query rows in blocks of about BLOCK_SCORES scores [B*h, rows, n]."""
    block = max(1, BLOCK_SCORES.get(device.type, BLOCK_SCORES["cpu"]) // (heads * n))
    return [slice(start, min(start + block, n)) for start in range(0, n, block)]


def rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class BiasedAttention(torch.autograd.Function):
    """Attention with the position bias, a block of query rows at a time, holding neither the
    [B, h, n, n] bias nor the [B, h, n, 2k] tables: memory O(B h rows n).

    Inputs Q, K, V [B, h, n, d] and the position keys and queries PK, PQ [h, 2k, d] (s folded
    in). Forward: P2CT = PQ K^T [B, h, 2k, n] once; for each block of rows C2P = Q_rows PK^T
    [B, h, rows, 2k], Bias = position_bias, O_rows = attention(Q_rows, K, V, Bias), with `flash`
    SDPA's CPU flash kernel (which returns L, each row's log-sum-exp, and takes a bias that needs
    no gradient) or else SDPA, whose dropout mask the block's saved RNG state replays in backward.
    Backward rebuilds P2CT once and each block's C2P and Bias, and gets dS, the gradient of the
    block's logits: by hand after flash,
        P = exp(s Q K^T + Bias - L),   dV += P^T dO,   dS = P * (dO V^T - rowsum(dO * O)),
        dQ = s dS K,   dK += s dS^T Q,
    else by autograd on the block. Then dC2P[i, c(i,j)] += dS[i, j], dP2CT[c(i,j), j] += dS[i, j],
    dQ_rows += dC2P PK, dPK += dC2P^T Q_rows; at the end dPQ = dP2CT K, dK += dP2CT^T PQ.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, Q, K, V, PK, PQ, T, bias, s, dropout, flash):
        B, h, n, _ = Q.shape
        W = T.flip(0).unfold(0, n, 1)
        P2CT = PQ @ K.transpose(-1, -2) if PQ is not None else None  # [B, h, 2k, n]
        O = Q.new_empty(B, h, n, V.shape[-1])
        L = Q.new_empty(B, h, n) if flash else None
        ctx.states = []
        for rows in row_blocks(B * h, n, Q.device):
            C2P = Q[:, :, rows] @ PK.transpose(-1, -2) if PK is not None else None
            Bias = position_bias(C2P, P2CT, bias, W, rows)
            if flash:
                O[:, :, rows], L[:, :, rows] = FLASH_CPU(
                    Q[:, :, rows], K, V, attn_mask=Bias, scale=s
                )
            else:
                ctx.states.append(rng_state(Q.device) if dropout > 0 else None)
                O[:, :, rows] = F.scaled_dot_product_attention(
                    Q[:, :, rows], K, V, attn_mask=Bias, dropout_p=dropout, scale=s
                )
        ctx.save_for_backward(Q, K, V, PK, PQ, T, bias, O if flash else None, L)
        ctx.scale, ctx.dropout, ctx.flash = s, dropout, flash
        return O

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dO):
        Q, K, V, PK, PQ, T, bias, O, L = ctx.saved_tensors
        s, flash = ctx.scale, ctx.flash
        B, h, n, _ = Q.shape
        W = T.flip(0).unfold(0, n, 1)
        P2CT = PQ @ K.transpose(-1, -2) if PQ is not None else None
        dQ, dK, dV = torch.empty_like(Q), torch.zeros_like(K), torch.zeros_like(V)
        dPK = torch.zeros_like(PK) if PK is not None else None
        dP2CT = torch.zeros_like(P2CT) if PQ is not None else None
        delta = (dO * O).sum(-1, keepdim=True) if flash else None  # rowsum(dO * O): [B, h, n, 1]
        now = rng_state(Q.device) if ctx.dropout > 0 else None
        k, v = K.detach().requires_grad_(), V.detach().requires_grad_()
        blocks = row_blocks(B * h, n, Q.device)
        for rows, state in zip(blocks, ctx.states or [None] * len(blocks), strict=True):
            Qr, dOr = Q[:, :, rows], dO[:, :, rows]
            C2P = Qr @ PK.transpose(-1, -2) if PK is not None else None  # [B, h, rows, 2k]
            Bias = position_bias(C2P, P2CT, bias, W, rows).expand(B, h, -1, -1)
            if flash:
                P = torch.matmul(Qr, K.transpose(-1, -2)).mul_(s).add_(Bias)
                P.sub_(L[:, :, rows, None]).exp_()  # [B, h, rows, n]
                dV += P.transpose(-1, -2) @ dOr
                dS = (dOr @ V.transpose(-1, -2)).sub_(delta[:, :, rows]).mul_(P)
                dQr = (dS @ K).mul_(s)
                dK += (dS.transpose(-1, -2) @ Qr).mul_(s)
            else:
                if state is not None:
                    set_rng_state(Q.device, state)
                with torch.enable_grad():
                    q = Qr.detach().requires_grad_()
                    Bl = Bias.detach().requires_grad_(PK is not None or PQ is not None)
                    o = F.scaled_dot_product_attention(
                        q, k, v, attn_mask=Bl, dropout_p=ctx.dropout, scale=s
                    )
                    grads = torch.autograd.grad(o, (q, k, v, Bl) if Bl.requires_grad else (q, k, v), dOr)
                dQr, dS = grads[0], grads[3] if Bl.requires_grad else None
                dK += grads[1]
                dV += grads[2]
            if dS is not None and (PK is not None or PQ is not None):
                dC2P = torch.zeros_like(C2P) if PK is not None else None
                add_bias_grad(dC2P, dP2CT, dS.reshape(B * h, -1), W, rows)
                if PK is not None:
                    dQr = dQr + dC2P @ PK
                    dPK += (dC2P.transpose(-1, -2) @ Qr).sum(0)
            dQ[:, :, rows] = dQr
        if now is not None:
            set_rng_state(Q.device, now)
        dPQ = None
        if PQ is not None:
            dPQ = (dP2CT @ K).sum(0)  # [h, 2k, d]
            dK += dP2CT.transpose(-1, -2) @ PQ
        return dQ, dK, dV, dPK, dPQ, None, None, None, None, None


# --- flex: FlexAttention, no [n, n] tensor (CUDA) ---------------------------------------------


@functools.cache
def compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def attend_flex(Q, K, V, C2P, P2CT, T, keep, s: float) -> torch.Tensor:
    """FlexAttention with c2p + p2c added in `score_mod` from the small tables; padding keys are
    skipped by the block mask. Compiled on CUDA; elsewhere flex_attention's eager reference
    (forward only), which the tests use."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, _, n, _ = Q.shape
    compiled = Q.is_cuda
    zero = Q.new_zeros(())

    def score_mod(score, b, h, i, j):  # score = s Q_i.K_j
        c = T[i - j + n - 1]
        c2p = C2P[b, h, i, c] if C2P is not None else zero
        p2c = P2CT[b, h, c, j] if P2CT is not None else zero
        return score + c2p + p2c

    def real_key(b, h, i, j):
        return keep[b, j]

    mask = None  # no padding: no block is skipped
    if keep is not None:
        mask = create_block_mask(real_key, B, None, n, n, device=Q.device, _compile=compiled)
    attention = compiled_flex_attention() if compiled else flex_attention
    return attention(Q, K, V, score_mod=score_mod, block_mask=mask, scale=s)
