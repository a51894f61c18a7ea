"""IGLOO-seq (Sourkov 2018, arXiv 1807.03402) as a token mixer: every position reads many random
"patches" of positions, scores each patch with learned weights and mixes one value per patch.

The paper leaves most of this open; this is the formulation the project commits to. Per example,
with X ∈ R^{n×D} (n = max_len, the CLS position included) and padding mask m ∈ {0, 1}^n:

  1. H = LeakyReLU_0.1(Conv1d_k(X ⊙ m)) ⊙ m                                   [n, d_conv]
  2. index tables, drawn once at construction: I[i, p, :] = patch_size distinct, sorted
     positions and J[i, p] ∈ I[i, p, :] its value position, for d1 patches p per position i
  3. T1[i, p] = Σ_l Σ_c W[p, l, c] H[I[i, p, l], c] + b[p]                      [n, d1]
  4. P[i, :] = softmax_p(T1[i, :]), patches whose value position is padding masked   [n, d1]
  5. T2 = X W1; T3[i, p] = T2[J[i, p]]; T4 = T3 ⊙ B_i; O_i = Σ_p P[i, p] T4[i, p]; out = O W_O

Choices made here (also in the README):
- Conv: kernel k (3), "same" zero padding or `causal` (k-1 zeros on the left). Padding tokens
  are zeroed before the conv (the last real token sees zeros, as past the end of a sequence)
  and H is zeroed on them, so no patch reads anything of the padding.
- Tables: patch slot p is `local` or `global` for every i. `mixed` (default): the first
  ⌈d1/2⌉ slots local, the rest global. Local: a Gaussian around i with σ = max(2, n/200),
  restricted to [0, n) (as the seed's rejection sampler does); global: uniform over [0, n).
  A patch contains i with probability `contains_self` (0.75, the seed's value) and otherwise
  excludes it, so the rate is exact. Positions in a patch are distinct and sorted (weight slot l
  sees the l-th earliest position, as in the seed). J[i, p] is a member of the patch drawn
  uniformly (the seed draws it separately; taking it from the patch means a score always
  decides over a value it has read, and position i reads exactly the positions in I[i]).
  The generator is seeded by `seed`, or, when null, from torch's global generator (seeded by
  the run's seed, so layers differ and a run is reproducible). The tables are buffers: a
  checkpoint restores them.
- Shorter batches (`pad_to: batch`): the tables are cut to the batch's length n and a position
  ≥ n reads as padding, so outputs do not depend on how far a batch is padded.
- `score_norm: softmax` is step 4 (the paper); `none` uses T1 as it is, unnormalised (an
  ablation: lra-igloo's `IGLOO1Dseq_KERNEL` also mixes T1 through a learned P×P matrix, and none
  of its scripts calls it). A
  position whose every patch has a padding value position gets O_i = 0.
- Widths: the values have width dv = qkv_dim (W1: D -> dv, B ∈ R^{n×dv}, W_O: dv -> D; with
  dv = D, B ∈ R^{n×D} as the seed's B ∈ R^{n×1×d}). B starts at 1. `num_heads` is unused;
  `attn_dropout` drops entries of P.
- `scale_rows` R (default max_len: the paper's one row per position) lets B be coarser for
  parameter matching: B ∈ R^{R×dv} and position i uses row ⌊i·R/max_len⌋, so consecutive blocks
  of max_len/R positions share a row; R = 1 is one scale per channel. B costs R·dv parameters and
  nothing else in the mixer grows with n, so at long n and small D it is what lra.params turns.

Linear cost, without a [B, n, d1, patch_size, d_conv] tensor: W is shared across positions, so
step 3 projects first, G[j, p, l] = Σ_c W[p, l, c] H[j, c] ([n, d1·patch_size], the same FLOPs),
then gathers T1[i, p] = Σ_l G[I[i, p, l], p, l] + b[p]. B_i does not depend on p, so step 5 is
O_i = B_i ⊙ Σ_p P[i, p] T2[J[i, p]], one `embedding_bag` that never holds T3 [B, n, d1, D].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lra.registry import MIXERS

ROWS_PER_DRAW = 2**20  # window entries drawn at once when sampling local patches (memory bound)


def gumbel_top_k(logits: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k distinct columns per row, drawn without replacement with probability ∝ exp(logits)."""
    u = torch.rand(logits.shape, generator=g, dtype=logits.dtype)
    return (logits - torch.log(-torch.log(u))).topk(k, dim=-1).indices


def sample_local(i: torch.Tensor, k: int, n: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """k distinct positions ≠ i[r] per row r, Gaussian around i[r] (σ), restricted to [0, n)."""
    h = max(math.ceil(4 * sigma), k)  # window: holds k positions on either side of i
    offsets = torch.arange(-h, h + 1)  # [w]
    log_w = -(offsets.double() ** 2) / (2 * sigma**2)  # [w]
    out = []
    for rows in i.split(max(1, ROWS_PER_DRAW // len(offsets))):
        pos = rows[:, None] + offsets  # [r, w]
        outside = (pos < 0) | (pos >= n) | (offsets == 0)
        logits = log_w.expand(pos.shape).masked_fill(outside, -math.inf)
        out.append(pos.gather(1, gumbel_top_k(logits, k, g)))
    return torch.cat(out)  # [rows, k]


def sample_global(
    i: torch.Tensor, k: int, n: int, sigma: float, g: torch.Generator
) -> torch.Tensor:
    """k distinct positions ≠ i[r] per row r, uniform over [0, n)."""
    taken = i[:, None]  # [rows, 1]; draw j picks the r-th of the n-1-j positions not yet taken
    for j in range(k):
        r = torch.randint(0, n - 1 - j, (len(i),), generator=g)
        for t in taken.sort(dim=1).values.T:  # step over the taken positions, in increasing order
            r = r + (r >= t)
        taken = torch.cat([taken, r[:, None]], dim=1)
    return taken[:, 1:]  # [rows, k]


SAMPLERS = {"local": sample_local, "global": sample_global}
LOCAL_SLOTS = {"local": lambda d1: d1, "global": lambda d1: 0, "mixed": lambda d1: (d1 + 1) // 2}


def index_tables(
    n: int, d1: int, patch_size: int, sampling: str, contains_self: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """I [n, d1, patch_size] (distinct, sorted) and J [n, d1] (a member of each patch)."""
    sigma = max(2.0, n / 200)
    local = LOCAL_SLOTS[sampling](d1)
    i = torch.arange(n)[:, None].expand(n, d1)  # [n, d1]: the position each patch belongs to
    others = torch.cat(  # [n, d1, patch_size] positions ≠ i
        [
            SAMPLERS[kind](i[:, slots].reshape(-1), patch_size, n, sigma, g).view(n, -1, patch_size)
            for kind, slots in (("local", slice(None, local)), ("global", slice(local, None)))
        ],
        dim=1,
    )
    with_self = torch.cat([i[..., None], others[..., :-1]], dim=-1)
    contains = torch.rand(n, d1, generator=g) < contains_self  # [n, d1]
    I = torch.where(contains[..., None], with_self, others).sort(dim=-1).values
    J = I.gather(-1, torch.randint(0, patch_size, (n, d1, 1), generator=g)).squeeze(-1)
    return I, J


def softmax_scores(T1: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    P = T1.masked_fill(~valid, torch.finfo(T1.dtype).min).softmax(dim=-1)
    return P * valid  # all patches masked: P = 0, not uniform


def raw_scores(T1: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return T1 * valid


SCORE_NORMS = {"softmax": softmax_scores, "none": raw_scores}
CONV_PADDING = {"same": lambda k: ((k - 1) // 2, k // 2), "causal": lambda k: (k - 1, 0)}


def choice(name: str, value: str, options: dict) -> str:
    if value not in options:
        raise ValueError(f"igloo: {name}='{value}' is not one of {', '.join(options)}")
    return value


@MIXERS.register("igloo")
class IglooSeq(nn.Module):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_dim: int,
        attn_dropout: float = 0.0,
        max_len: int | None = None,
        mask_queries: bool = False,  # no queries: its padded outputs are its own, whatever the mode
        conv_dim: int = 32,
        conv_kernel: int = 3,
        padding: str = "same",
        num_patches: int = 32,
        patch_size: int = 4,
        sampling: str = "mixed",
        contains_self: float = 0.75,
        score_norm: str = "softmax",
        bias: bool = True,
        seed: int | None = None,
        scale_rows: int | None = None,
    ) -> None:
        super().__init__()
        if max_len is None:
            raise ValueError(
                "igloo needs max_len: its index tables and B have one row per position"
            )
        if not 1 <= patch_size < max_len:
            raise ValueError(
                f"igloo: patch_size={patch_size} needs 1 <= patch_size < max_len={max_len} "
                "(a patch that leaves out its own position needs patch_size other positions)"
            )
        R = max_len if scale_rows is None else scale_rows
        if not 1 <= R <= max_len:
            raise ValueError(f"igloo: scale_rows={R} needs 1 <= scale_rows <= max_len={max_len}")
        self.pad = CONV_PADDING[choice("padding", padding, CONV_PADDING)](conv_kernel)
        self.normalise = SCORE_NORMS[choice("score_norm", score_norm, SCORE_NORMS)]
        choice("sampling", sampling, LOCAL_SLOTS)
        d1, ps = num_patches, patch_size
        self.conv = nn.Conv1d(d_model, conv_dim, conv_kernel)
        self.W = nn.Parameter(
            torch.empty(d1, ps, conv_dim).uniform_(-1, 1) / math.sqrt(ps * conv_dim)
        )
        self.b = nn.Parameter(torch.zeros(d1))
        self.W1 = nn.Linear(d_model, qkv_dim, bias=bias)
        self.B = nn.Parameter(torch.ones(R, qkv_dim))
        row = torch.arange(max_len) * R // max_len  # [max_len]: the row of B that position i uses
        self.register_buffer("row", row, persistent=False)
        self.out = nn.Linear(qkv_dim, d_model, bias=bias)
        self.drop = nn.Dropout(attn_dropout)
        if torch.get_default_device().type == "meta":  # counting parameters: tables not needed
            I = torch.empty(max_len, d1, ps, dtype=torch.long)
            J = torch.empty(max_len, d1, dtype=torch.long)
        else:
            if seed is None:
                seed = int(torch.randint(2**62, ()))
            g = torch.Generator().manual_seed(seed)
            I, J = index_tables(max_len, d1, ps, sampling, contains_self, g)
        self.register_buffer("I", I)  # [max_len, d1, patch_size]
        self.register_buffer("J", J)  # [max_len, d1]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        Bsz, n, _ = x.shape
        d1, ps, _ = self.W.shape
        if mask is None:  # no padding: every position is real
            mask = torch.ones(Bsz, n, dtype=torch.bool, device=x.device)
        m = mask[..., None].to(x.dtype)  # [B, n, 1]
        # 1. H = LeakyReLU(Conv1d(X ⊙ m)) ⊙ m                                 [B, n, d_conv]
        H = self.conv(F.pad((x * m).transpose(1, 2), self.pad)).transpose(1, 2)
        H = F.leaky_relu(H, 0.1) * m
        # 2. the tables cut to this batch; a position >= n reads row n: zero, and masked
        I = self.I[:n].clamp(max=n)  # [n, d1, ps]
        J = self.J[:n].clamp(max=n)  # [n, d1]
        # 3. G[j, p, l] = Σ_c W[p, l, c] H[j, c]; T1[i, p] = Σ_l G[I[i, p, l], p, l] + b[p]
        G = F.pad(H @ self.W.flatten(0, 1).T, (0, 0, 0, 1))  # [B, n+1, d1·ps]
        slot = torch.arange(d1 * ps, device=x.device).view(d1, ps)  # (p, l) -> column of G
        flat = (I * (d1 * ps) + slot).flatten()  # [n·d1·ps] into G.flatten(1)
        T1 = G.flatten(1).index_select(1, flat).view(Bsz, n, d1, ps).sum(-1) + self.b  # [B, n, d1]
        # 4. P = softmax_p(T1) over the patches whose value position is a real token
        valid = torch.cat([mask, mask.new_zeros(Bsz, 1)], dim=1)[:, J]  # [B, n, d1]
        P = self.drop(self.normalise(T1, valid))  # [B, n, d1]
        # 5. O_i = B_i ⊙ Σ_p P[i, p] T2[J[i, p]]
        T2 = self.W1(x)  # [B, n, dv]
        rows = J.clamp(max=n - 1) + n * torch.arange(Bsz, device=x.device)[:, None, None]
        O = F.embedding_bag(  # Σ_p P[i, p] T2[J[i, p]]                         [B·n, dv]
            rows.view(Bsz * n, d1),
            T2.reshape(Bsz * n, -1),
            per_sample_weights=P.reshape(Bsz * n, d1).to(T2.dtype),
            mode="sum",
        )
        return self.out(O.view(Bsz, n, -1) * self.B[self.row[:n]])
