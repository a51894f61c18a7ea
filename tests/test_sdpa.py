"""Chunked CPU attention with dropout is the same function as PyTorch's, in bounded memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import lra.models.sdpa as sdpa


def test_chunked_path_matches_sdpa_values_and_gradients(monkeypatch) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, requires_grad=True) for _ in range(3))
    keep = torch.ones(2, 1, 1, 37, dtype=torch.bool)
    keep[1, ..., 20:] = False

    torch.manual_seed(1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=0.0)
    ref.square().sum().backward()
    ref_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None

    # force chunks of 5 query rows; with p -> 0 the dropout path must equal plain attention
    monkeypatch.setattr(sdpa, "CHUNK_BYTES", 4 * 2 * 3 * 37 * 5)
    monkeypatch.setattr(sdpa, "available_bytes", lambda: 1 << 20)  # 1 MiB free
    out = sdpa.attend(q, k, v, attn_mask=keep, dropout_p=1e-12)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for got, want in zip((q.grad, k.grad, v.grad), ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_dropout_is_applied_and_backward_reuses_the_same_mask(monkeypatch) -> None:
    monkeypatch.setattr(sdpa, "CHUNK_BYTES", 4 * 1 * 1 * 16 * 4)
    monkeypatch.setattr(sdpa, "available_bytes", lambda: 1 << 10)
    v = torch.eye(16)[None, None].requires_grad_()
    q = torch.zeros(1, 1, 16, 4)
    k = torch.zeros(1, 1, 16, 4)
    torch.manual_seed(3)
    out = sdpa.attend(q, k, v, dropout_p=0.5)
    # uniform attention 1/16, kept entries scaled by 2: each entry is 0 or 1/8
    assert set(out.detach().unique().tolist()) <= {0.0, 0.125}
    assert 0 < (out > 0).sum() < 256
    out.sum().backward()
    # d out / d v[j] sums the kept probabilities of column j: consistent with the forward mask
    torch.testing.assert_close(v.grad[0, 0][:, 0], out.detach()[0, 0].sum(0))


def test_it_chunks_only_where_the_unchunked_scores_would_not_fit(monkeypatch) -> None:
    calls = []

    def counted(f, *args, use_reentrant, **kwargs):
        calls.append(1)
        return f(*args, **kwargs)

    monkeypatch.setattr(sdpa, "checkpoint", counted)
    q = k = v = torch.randn(2, 4, 512, 8, requires_grad=True)  # 8 MiB of fp32 scores
    monkeypatch.setattr(sdpa, "CHUNK_BYTES", 1 << 20)  # chunks of 1 MiB, where it chunks
    monkeypatch.setattr(sdpa, "available_bytes", lambda: 16 << 30)
    sdpa.attend(q, k, v, dropout_p=0.1)
    assert calls == [], "16 GiB free: one call, no recomputation in backward"
    monkeypatch.setattr(sdpa, "available_bytes", lambda: 64 << 20)  # 3 x 8 MiB > 64 MiB / 8
    sdpa.attend(q, k, v, dropout_p=0.1)
    assert len(calls) == 8, "64 MiB free: chunks of 64 query rows"
    monkeypatch.setattr(sdpa, "available_bytes", lambda: 20 << 30)  # this machine, about
    assert sdpa.needs_chunks(32, 8, 2001, 2001), "ListOps' protocol: 12 GiB a layer"
    assert not sdpa.needs_chunks(2, 4, 4096, 4096), "the bench's text shape at 4K: 1.5 GiB"
