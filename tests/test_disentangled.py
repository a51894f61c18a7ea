"""Disentangled attention (lra/models/attention/disentangled.py): the relative index, the position
terms against the equations, parity with transformers' DeBERTa-v2, the fast paths against the
reference, padding, the encoder's shared table and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Runs

import lra.models.attention.disentangled as dis
from lra.build import build_net, compose, configs
from lra.matching import match_parameters
from lra.models.attention.disentangled import (
    DisentangledAttention,
    RelativeEmbeddings,
    log_bucket,
    relative_index,
)
from lra.models.classifier import build_classifier, count_parameters


@pytest.fixture
def hf():
    """transformers' DeBERTa-v2 module (the `dev` extra installs transformers)."""
    return pytest.importorskip("transformers.models.deberta_v2.modeling_deberta_v2")


def mixer_and_table(n: int, dtype=torch.float32, seed: int = 0, **options):
    """A small mixer (D=16, 2 heads of 8) and its shared table, as the encoder would build them."""
    kwargs = dict(d_model=16, num_heads=2, qkv_dim=16, max_len=n, **options)
    torch.manual_seed(seed)
    mixer = DisentangledAttention(**kwargs).to(dtype).eval()
    shared = DisentangledAttention.build_shared(**kwargs).to(dtype)
    with torch.no_grad():  # LayerNorm's affine away from (1, 0), so that a missing LN shows
        for p in shared.norm.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return mixer, shared


def right_padded(lengths: list[int], n: int, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), n, 16, generator=g, dtype=dtype)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # [B, n]
    return x, mask


# --- the relative index ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "max_position", "expected"),
    [
        # mid = 128: |r| <= mid stays; beyond, mid + ceil(ln(|r|/mid) / ln(1999/mid) * 127)
        (
            256,
            2000,
            {0: 0, 1: 1, 127: 127, 128: 128, 129: 129, 1999: 255, 2000: 256, 10**6: 543},
        ),
        # mid = 4: ln(10/4)/ln(63/4)*3 = 0.997 -> 5, ln(11/4)/ln(63/4)*3 = 1.10 -> 6
        (8, 64, {3: 3, 4: 4, 5: 5, 10: 5, 11: 6, 63: 7, 64: 8, 1000: 11}),
    ],
)
def test_log_buckets_match_hand_computed_values(buckets, max_position, expected) -> None:
    r = torch.tensor(list(expected))
    want = torch.tensor(list(expected.values()))
    assert log_bucket(r, buckets, max_position).tolist() == want.tolist()
    assert log_bucket(-r, buckets, max_position).tolist() == (-want).tolist(), "odd in r"


def test_relative_index_clamps_buckets_to_the_table() -> None:
    # k = 256: c = clamp(bucket + 256, 0, 511); offsets -2000..1999 of a 2001-token sequence
    T = relative_index(2001, k=256, buckets=256, max_position=2000)
    at = {r: int(T[r + 2000]) for r in (-2000, -1999, -129, 0, 128, 129, 1999, 2000)}
    assert at == {-2000: 0, -1999: 1, -129: 127, 0: 256, 128: 384, 129: 385, 1999: 511, 2000: 511}
    # no buckets: the seed's delta, 0 for i-j <= -k, 2k-1 for i-j >= k, i-j+k otherwise
    T = relative_index(10, k=3, buckets=0, max_position=3)
    assert T.tolist() == [0] * 7 + [1, 2, 3, 4, 5] + [5] * 7


def test_log_buckets_equal_transformers_everywhere(hf) -> None:
    r = torch.arange(-5000, 5001)
    for buckets, max_position in [(256, 2000), (256, 512), (8, 64), (4, 7), (2, 100)]:
        theirs = hf.make_log_bucket_position(r, buckets, max_position).long()
        assert torch.equal(log_bucket(r, buckets, max_position), theirs), (buckets, max_position)


# --- the equations, by a naive double loop --------------------------------------------------


def naive_output(mixer, E, x, mask, p2c_index: str = "ij") -> torch.Tensor:
    """The paper's equations one score at a time. p2c_index="ji" indexes p2c with delta(j, i),
    as the paper writes it, instead of the published code's c(i, j)."""
    B, n, _ = x.shape
    h, d = mixer.h, mixer.d
    T = relative_index(n, mixer.k, mixer.buckets, mixer.max_position)

    def c(i, j):
        return int(T[i - j + n - 1])

    split = lambda t: t.view(*t.shape[:-1], h, d)  # noqa: E731
    Q, K, V = (split(p(x)) for p in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    PK = split((mixer.pos_k_proj or mixer.k_proj)(E))  # [2k, h, d]
    PQ = split((mixer.pos_q_proj or mixer.q_proj)(E))
    sf = 1 + mixer.c2p + mixer.p2c
    out = torch.zeros(B, n, h, d, dtype=x.dtype)
    for b in range(B):
        for a in range(h):
            A = torch.full((n, n), -math.inf, dtype=x.dtype)
            for i in range(n):
                for j in range(n):
                    if not mask[b, j]:
                        continue
                    score = Q[b, i, a] @ K[b, j, a]
                    if mixer.c2p:
                        score = score + Q[b, i, a] @ PK[c(i, j), a]
                    if mixer.p2c:
                        at = c(i, j) if p2c_index == "ij" else c(j, i)
                        score = score + K[b, j, a] @ PQ[at, a]
                    A[i, j] = score / math.sqrt(d * sf)
            out[b, :, a] = torch.softmax(A, -1) @ V[b, :, a]
    return mixer.out(out.reshape(B, n, h * d))


@pytest.mark.parametrize("share_att_key", [True, False])
@pytest.mark.parametrize("pos_att_type", [("c2p",), ("p2c",), ("c2p", "p2c")])
def test_position_terms_match_a_naive_double_loop(share_att_key, pos_att_type) -> None:
    n = 9
    mixer, shared = mixer_and_table(
        n,
        torch.float64,
        pos_att_type=pos_att_type,
        share_att_key=share_att_key,
        position_buckets=4,  # mid = 2: offsets 3 and 4 share a bucket, 5+ are clipped
        max_relative_positions=5,
    )
    x, mask = right_padded([n, 6], n, torch.float64)
    E = shared()["rel_embeddings"]
    with torch.no_grad():
        want = naive_output(mixer, E, x, mask)
        for impl in ("eager", "sdpa"):
            mixer.impl = impl
            got = mixer(x, mask, E)
            torch.testing.assert_close(got[mask], want[mask], atol=1e-12, rtol=0)
        if "p2c" in pos_att_type:  # the paper's delta(j, i) is another function: this test can fail
            swapped = naive_output(mixer, E, x, mask, p2c_index="ji")
            assert (got[mask] - swapped[mask]).abs().max() > 1e-3


# --- parity with transformers' DebertaV2 ----------------------------------------------------

BUCKETS = {  # position_buckets, max_relative_positions
    "off": (0, 16),  # clipped at +-16
    "small": (8, 64),  # log buckets beyond +-4, past max_position from 64 on
    "256": (256, 512),  # DeBERTa-v3's buckets, past max_position at length 1100
}
GRID = [
    (share, pos, buckets, n)
    for share in (True, False)
    for pos in (("c2p",), ("p2c",), ("c2p", "p2c"))
    for buckets in BUCKETS
    for n in (1, 7, 64, 513) + ((1100,) if buckets == "256" else ())
]


def transformers_attention(hf, mixer, pos_att_type, share_att_key, buckets, max_relative):
    """DisentangledSelfAttention with the mixer's weights copied in, dropout 0."""
    config = hf.DebertaV2Config(
        hidden_size=16,
        num_attention_heads=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        relative_attention=True,
        pos_att_type=list(pos_att_type),
        share_att_key=share_att_key,
        position_buckets=buckets if buckets > 0 else -1,
        max_relative_positions=max_relative,
    )
    theirs = hf.DisentangledSelfAttention(config).eval()
    pairs = [("query_proj", "q_proj"), ("key_proj", "k_proj"), ("value_proj", "v_proj")]
    if not share_att_key:
        pairs += [("pos_key_proj", "pos_k_proj")] * ("c2p" in pos_att_type)
        pairs += [("pos_query_proj", "pos_q_proj")] * ("p2c" in pos_att_type)
    for their_name, our_name in pairs:
        getattr(theirs, their_name).load_state_dict(getattr(mixer, our_name).state_dict())
    return theirs


@pytest.mark.parametrize(("share_att_key", "pos_att_type", "buckets", "n"), GRID)
def test_matches_transformers_deberta_v2_attention(hf, share_att_key, pos_att_type, buckets, n):
    position_buckets, max_relative = BUCKETS[buckets]
    options = dict(
        pos_att_type=pos_att_type,
        share_att_key=share_att_key,
        position_buckets=position_buckets,
        max_relative_positions=max_relative,
    )
    mixer, shared = mixer_and_table(n, **options)
    theirs = transformers_attention(
        hf, mixer, pos_att_type, share_att_key, position_buckets, max_relative
    )
    x, mask = right_padded([n, max(1, n - n // 3), max(1, n // 2)], n)
    E = shared()["rel_embeddings"]
    with torch.no_grad():
        pair_mask = (mask[:, None, :, None] & mask[:, None, None, :]).long()  # get_attention_mask
        context, _ = theirs(x, pair_mask, rel_embeddings=E)
        want = mixer.out(context)
        for impl in ("eager", "sdpa"):
            mixer.impl = impl
            torch.testing.assert_close(mixer(x, mask, E)[mask], want[mask], atol=1e-5, rtol=1e-5)


def test_shared_table_is_layer_normed_like_transformers_encoder(hf) -> None:
    config = hf.DebertaV2Config(
        hidden_size=16,
        num_attention_heads=2,
        num_hidden_layers=1,
        relative_attention=True,
        position_buckets=8,
        max_relative_positions=64,
        norm_rel_ebd="layer_norm",
    )
    encoder = hf.DebertaV2Encoder(config)
    _, shared = mixer_and_table(64, position_buckets=8, max_relative_positions=64)
    with torch.no_grad():
        encoder.rel_embeddings.weight.copy_(shared.E)
        encoder.LayerNorm.load_state_dict(shared.norm.state_dict())
        torch.testing.assert_close(shared()["rel_embeddings"], encoder.get_rel_embedding())


# --- the fast paths against the reference -------------------------------------------------


@pytest.mark.parametrize(
    ("pos_att_type", "buckets", "max_relative", "n"),
    [
        (("c2p", "p2c"), 256, 300, 131),
        (("c2p", "p2c"), 8, 32, 40),
        (("c2p",), 0, 5, 33),
        (("p2c",), 0, 5, 33),
        ((), 8, 32, 17),
    ],
)
def test_fast_paths_equal_eager_in_outputs_and_gradients(
    monkeypatch, pos_att_type, buckets, max_relative, n
) -> None:
    monkeypatch.setitem(dis.BLOCK_SCORES, "cpu", 3 * 2 * n * 7)  # several row blocks, a ragged last
    mixer, shared = mixer_and_table(
        n,
        torch.float64,
        pos_att_type=pos_att_type,
        position_buckets=buckets,
        max_relative_positions=max_relative,
        share_att_key=False,
    )
    x, mask = right_padded([n, n - 5, 1], n, torch.float64)
    weight = torch.randn(3, n, 16, dtype=torch.float64) * mask[..., None]
    results = {}
    flash = dis.FLASH_CPU
    for impl, path in (("eager", "eager"), ("sdpa", "flash"), ("sdpa", "blocked")):
        monkeypatch.setattr(dis, "FLASH_CPU", flash if path == "flash" else None)
        mixer.impl = impl
        mixer.zero_grad()
        shared.zero_grad()
        xi = x.clone().requires_grad_()
        y = mixer(xi, mask, **shared())
        (y * weight).sum().backward()
        params = list(mixer.parameters()) + list(shared.parameters())
        results[path] = [y[mask], xi.grad] + [p.grad for p in params if p.grad is not None]
    for path in ("flash", "blocked"):  # CPU's flash kernel; SDPA on blocks (CUDA's, dropout's)
        assert len(results[path]) == len(results["eager"]) > 5
        for fast, ref in zip(results[path], results["eager"], strict=True):
            torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
    with torch.no_grad():  # FlexAttention's eager reference on CPU: forward only
        mixer.impl = "flex"
        torch.testing.assert_close(mixer(x, mask, **shared())[mask], results["eager"][0])


def small_problem() -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]:
    """(Q, K, V, PK, PQ) in float64 requiring grad, T and a padding bias: B=2, h=1, n=6, 2k=5."""
    torch.manual_seed(0)
    B, h, n, d, k2 = 2, 1, 6, 2, 5
    Q, K, V = (torch.randn(B, h, n, d, dtype=torch.float64, requires_grad=True) for _ in "qkv")
    PK, PQ = (torch.randn(h, k2, d, dtype=torch.float64, requires_grad=True) for _ in "kq")
    bias = torch.zeros(B, 1, 1, n, dtype=torch.float64)
    bias[1, ..., -2:] = torch.finfo(torch.float64).min  # two padding keys in sequence 1
    T = relative_index(n, k=2, buckets=0, max_position=2)  # c in 0..3 of 5 rows
    return (Q, K, V, PK, PQ), T, bias


def test_the_flash_path_passes_gradcheck(monkeypatch) -> None:
    monkeypatch.setitem(dis.BLOCK_SCORES, "cpu", 2 * 6 * 4)  # blocks of 4 rows: 2 blocks
    inputs, T, bias = small_problem()
    assert torch.autograd.gradcheck(
        lambda *t: dis.BiasedAttention.apply(*t, T, bias, 0.4, 0.0, True), inputs, atol=1e-7
    )


def test_the_blocked_sdpa_path_with_dropout_passes_gradcheck(monkeypatch) -> None:
    """Each block's dropout mask is replayed in backward: with the generator seeded before each
    call, the function is deterministic and its gradient the numerical one."""
    monkeypatch.setitem(dis.BLOCK_SCORES, "cpu", 2 * 6 * 4)
    inputs, T, bias = small_problem()

    def attend(*t, dropout=0.3):
        torch.manual_seed(7)
        return dis.BiasedAttention.apply(*t, T, bias, 0.4, dropout, False)

    assert (attend(*inputs) != attend(*inputs, dropout=0.0)).any(), "dropout is on"
    assert torch.autograd.gradcheck(attend, inputs, atol=1e-7)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_sdpa_path_never_holds_an_n_by_n_tensor(monkeypatch, dropout: float) -> None:
    """Memory is O(B h rows n): no tensor of forward or backward reaches B h n n elements, and no
    [B, h, n, 2k] position table is held (here 2k = 32 << n: P2CT [B, h, 2k, n] is made once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):  # memory, not a view's extent
                    size = t.untyped_storage().nbytes() // t.element_size()
                    Largest.numel = max(Largest.numel, size)
            return out

    n, B = 256, 2
    monkeypatch.setitem(dis.BLOCK_SCORES, "cpu", B * 2 * n * 32)  # blocks of 32 rows
    mixer, shared = mixer_and_table(n, attn_dropout=dropout, position_buckets=16)
    mixer.train()
    x, mask = right_padded([n, n - 9], n)
    x.requires_grad_()
    with Largest():
        mixer(x, mask, **shared()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert Largest.numel <= B * 2 * n * 32, f"{Largest.numel} elements; B h n n = {B * 2 * n * n}"


def test_attention_dropout_trains_only_in_training_mode() -> None:
    mixer, shared = mixer_and_table(12, attn_dropout=0.5)
    x, mask = right_padded([12, 8], 12)
    eval_out = mixer(x, mask, **shared())
    torch.testing.assert_close(mixer(x, mask, **shared()), eval_out)
    mixer.train()
    y = mixer(x.requires_grad_(), mask, **shared())
    assert (y - eval_out).abs().max() > 1e-3
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="impl=flex has no attention dropout"):
        mixer.impl = "flex"
        mixer(x, mask, **shared())


# --- in the encoder ---------------------------------------------------------------------------

ENCODER = dict(
    max_len=40,
    d_model=16,
    num_layers=2,
    num_heads=2,
    qkv_dim=16,
    mlp_dim=32,
    dropout=0.0,
    attn_dropout=0.0,
    pos_emb="none",
    pooling="cls",
)
MIXER = {"name": "disentangled", "position_buckets": 8, "max_relative_positions": 40}


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_right_padding_does_not_change_outputs(impl: str, pooling: str) -> None:
    torch.manual_seed(0)
    net = build_classifier({**ENCODER, "pooling": pooling}, {**MIXER, "impl": impl}, 16, 10)
    net.eval()
    x = torch.randint(1, 16, (2, 25))
    x[1, 17:] = 0
    padded = torch.cat([x, torch.zeros(2, 15, dtype=torch.long)], dim=1)
    torch.testing.assert_close(net({"input_ids": x}), net({"input_ids": padded}))


def test_encoder_builds_one_table_for_all_layers_and_counts_it() -> None:
    net = build_classifier(ENCODER, MIXER, vocab_size=16, num_classes=10)
    encoder = net.encoder
    assert isinstance(encoder.shared, RelativeEmbeddings)
    assert encoder.shared.E.shape == (16, 16), "2k rows for k = 8 buckets"
    per_layer = 4 * (16 * 16 + 16)  # W_q, W_k, W_v, W_o with biases; PK, PQ share W_k, W_q
    table = 16 * 16 + 2 * 16  # E and its LayerNorm, once
    assert count_parameters(net)["mixer"] == 2 * per_layer + table
    seen = []
    for block in encoder.blocks:
        block.mixer.register_forward_hook(
            lambda m, args, kw, out: seen.append(kw), with_kwargs=True
        )
    net({"input_ids": torch.randint(1, 16, (1, 10))})
    assert len(seen) == 2 and seen[0]["rel_embeddings"] is seen[1]["rel_embeddings"]
    baseline = build_classifier(ENCODER, {"name": "baseline"}, vocab_size=16, num_classes=10)
    assert baseline.encoder.shared is None
    assert not any(key.startswith("encoder.shared") for key in baseline.state_dict())


def test_bad_options_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"pos_att_type \['c2c'\] unknown: use a subset"):
        DisentangledAttention(16, 2, 16, max_len=8, pos_att_type=["c2p", "c2c"])
    with pytest.raises(ValueError, match="impl='fast' unknown: use one of auto, eager, sdpa"):
        DisentangledAttention(16, 2, 16, max_len=8, impl="fast")
    with pytest.raises(ValueError, match="position_buckets=1: use 0 .off. or >= 2"):
        DisentangledAttention(16, 2, 16, max_len=8, position_buckets=1)


def test_model_config_turns_absolute_positions_off_unless_overridden() -> None:
    def has_position_table(cfg) -> bool:
        return any(name.endswith(".pos") for name, _ in build_net(cfg).named_parameters())

    learned = ["task=listops_small", "task.encoder.pos_emb=learned"]
    cfg = compose([*learned, "model=disentangled"])
    assert cfg.model.encoder.pos_emb == "none" and not has_position_table(cfg)
    assert cfg.task.encoder.pos_emb == "learned", "the composed task's encoder is the task's"
    assert cfg.model.mixer.max_relative_positions == 200, "the task's max length"
    again = compose([*learned, "model=disentangled", "model.encoder.pos_emb=learned"])
    assert has_position_table(again)
    baseline = compose([*learned, "model=baseline"])
    assert has_position_table(baseline), "other models keep the task's"


def test_benchmark_layers_run_and_tabulate() -> None:
    from lra.bench import disentangled as bench

    for row in bench.ROWS:  # each factory builds and steps at a tiny size, in this process
        factory, kwargs = bench.POINTS[row]
        getattr(bench, factory)(n=24, B=1, D=16, heads=2, mlp=32, **kwargs)()
    points = [{"row": row, "n": 24, "seconds": 0.5, "peak_mb": 10.0} for row in bench.ROWS]
    points[0]["seconds"] = 0.25
    lines = bench.table(points, list(bench.ROWS), [24]).splitlines()
    assert lines[2] == "| disentangled | 250 | 10 | 0.50 |", "time, memory, time / transformers"


# --- a whole run ------------------------------------------------------------------------------


def test_model_disentangled_trains_without_absolute_positions_and_records_it(runs: Runs) -> None:
    r = runs.train("model=disentangled", "logger=csv")
    assert (r["model"], r["steps"], r["run_name"]) == (
        "disentangled",
        4,
        "listops_small-disentangled-s0",
    )
    assert 0.0 <= r["test_acc"] <= 1.0 and r["train_tokens_per_s"] > 0
    mixer = r["config"]["model"]["mixer"]
    assert mixer["name"] == "disentangled" and mixer["max_relative_positions"] == 200
    assert r["config"]["model"]["encoder"]["pos_emb"] == "none", "DeBERTa-v3: relative only"
    assert r["config"]["task"]["encoder"]["pos_emb"] == "none", "the encoder as it was built"
    state = torch.load(runs.root / "run/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert not any(k.endswith(".pos") for k in state), "no absolute position table was trained"
    # 2 layers of 4 projections (32x32; no biases with init: lra, as LRA's attention) and one
    # table E [512, 32] with its LayerNorm
    assert r["params"]["mixer"] == 2 * 4 * (32 * 32) + 512 * 32 + 2 * 32


@pytest.mark.parametrize("task", configs("task"))
def test_auto_never_picks_flex_for_a_head_size_the_cuda_kernel_cannot_take(task: str) -> None:
    """Every task's head size as trained (parameters matched), in training and in eval."""
    enc = match_parameters(compose([f"task={task}", "model=disentangled"])).task.encoder
    d = enc.qkv_dim // enc.num_heads
    for dropout in {enc.attn_dropout, 0.0}:  # training; eval
        chosen = dis.choose_impl("auto", "cuda", d, dropout)
        assert chosen == ("flex" if d >= dis.FLEX_MIN_HEAD and dropout == 0 else "sdpa"), (
            d,
            dropout,
        )
        assert dis.choose_impl("auto", "cpu", d, dropout) == "sdpa"
    if d < dis.FLEX_MIN_HEAD:
        with pytest.raises(ValueError, match=rf"needs a head size >= 16, this one is {d}"):
            dis.choose_impl("flex", "cuda", d, 0.0)


def test_the_small_heads_of_the_pixel_tasks_are_among_the_shapes_checked() -> None:
    heads = {}
    for task in ("image", "pathfinder", "pathx"):
        enc = match_parameters(compose([f"task={task}", "model=disentangled"])).task.encoder
        heads[task] = enc.qkv_dim // enc.num_heads
    assert all(d < dis.FLEX_MIN_HEAD for d in heads.values()), heads


def test_the_choice_is_logged_once_per_mode(caplog) -> None:
    mixer, shared = mixer_and_table(12)
    x, mask = torch.randn(2, 12, 16), torch.ones(2, 12, dtype=torch.bool)
    dis._announced.clear()
    with caplog.at_level("INFO", logger=dis.__name__):
        for _ in range(3):
            mixer(x, mask, **shared())
    lines = [r.message for r in caplog.records if "disentangled attention" in r.message]
    assert lines == ["disentangled attention (eval): impl=auto runs sdpa on cpu (head size 8, "
                     "dropout 0)"]  # fmt: skip


def test_the_bias_rows_are_aligned_for_sdpa() -> None:
    """A bias whose rows are not a multiple of 16 elements apart would be copied by SDPA."""
    n, k2 = 2001, 8
    W = relative_index(n, k=4, buckets=0, max_position=4).flip(0).unfold(0, n, 1)
    C2P, P2CT = torch.randn(2, 3, 5, k2), torch.randn(2, 3, k2, n)
    bias = torch.zeros(2, 1, 1, n)
    Bias = dis.position_bias(C2P, P2CT, bias, W, slice(10, 15))
    assert Bias.shape == (2, 3, 5, n) and Bias.stride(-2) % 16 == 0 and Bias.stride(-1) == 1
    c = W[n - 1 - 12, 7]  # row i = 12, key j = 7
    torch.testing.assert_close(Bias[1, 2, 2, 7], C2P[1, 2, 2, c] + P2CT[1, 2, c, 7])
