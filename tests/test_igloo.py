"""IGLOO: the IGLOO-seq mixer (`model=igloo`) and the original LRA IGLOO model (`igloo_lra`)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Runs
from omegaconf import OmegaConf

from lra.bench.igloo import crossover, mixer_step
from lra.build import build_module
from lra.models.attention.igloo import IglooSeq
from lra.models.classifier import build_classifier, count_parameters
from lra.models.igloo_lra import build_igloo_lra

D = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and spares OpenMP spin-waits on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mixer(n: int = 96, **options) -> IglooSeq:
    torch.manual_seed(0)
    options = {"num_patches": 6, "patch_size": 3, "conv_dim": 4, "seed": 0, **options}
    return IglooSeq(d_model=D, num_heads=2, qkv_dim=D, max_len=n, **options).eval()


def inputs(n: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), n, D, generator=g)
    mask = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


def read_by(m: IglooSeq, i: int) -> set[int]:
    return set(m.I[i].flatten().tolist())


# --- the mixer --------------------------------------------------------------------------------


def test_mixer_maps_b_n_d_to_b_n_d_and_trains_every_parameter() -> None:
    m = mixer().train()
    x, mask = inputs(96, [96, 40])
    y = m(x, mask)
    assert y.shape == (2, 96, D) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_encoder_with_igloo_mixer_gives_one_row_of_logits_per_sequence() -> None:
    encoder = dict(
        max_len=30, d_model=D, num_layers=2, num_heads=2, qkv_dim=D, mlp_dim=16,
        dropout=0.0, attn_dropout=0.0, pos_emb="sinusoidal", pooling="cls",
    )  # fmt: skip
    net = build_classifier(encoder, {"name": "igloo", "num_patches": 4}, 16, 10).eval()
    mixers = net.encoder.mixers()
    assert mixers[0].I.shape == (31, 4, 4), "the mixer sees max_len + 1 positions (CLS)"
    assert not torch.equal(mixers[0].I, mixers[1].I), "seed null: each layer its own tables"
    tokens = torch.randint(1, 16, (3, 30))
    tokens[0, 7:] = 0
    logits = net({"input_ids": tokens})
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert count_parameters(net)["mixer"] == sum(p.numel() for p in mixers[0].parameters()) * 2


@pytest.mark.parametrize("sampling", ["mixed", "local", "global"])
def test_index_tables_are_in_range_distinct_sorted_and_values_come_from_the_patch(
    sampling: str,
) -> None:
    m = mixer(n=300, num_patches=8, patch_size=5, sampling=sampling)
    I, J = m.I, m.J
    assert I.shape == (300, 8, 5) and J.shape == (300, 8)
    assert I.min() >= 0 and I.max() < 300
    assert (I.diff(dim=-1) > 0).all(), "positions in a patch are distinct and sorted"
    assert (J[..., None] == I).any(-1).all(), "J[i, p] is one of the patch's positions"


@pytest.mark.parametrize("rate", [0.75, 0.3])
def test_patches_contain_their_own_position_at_the_configured_rate(rate: float) -> None:
    m = mixer(n=512, num_patches=16, contains_self=rate)
    contains = (torch.arange(512)[:, None, None] == m.I).any(-1).float()  # [n, d1]
    assert contains.mean().item() == pytest.approx(rate, abs=0.02)  # 8192 patches: 4 sigma


def test_local_patches_stay_near_their_position_and_global_patches_spread_everywhere() -> None:
    n = 2000  # sigma = max(2, n/200) = 10
    m = mixer(n=n, num_patches=8, patch_size=4, sampling="mixed")
    offset = (m.I - torch.arange(n)[:, None, None]).float()  # [n, d1, ps]
    local, global_ = offset[:, :4], offset[:, 4:]
    assert local.abs().max() <= 40, "local: within the 4-sigma window"
    others = local[local != 0]  # the positions other than i: Gaussian, sigma = 10
    assert others.square().mean().sqrt().item() == pytest.approx(10, rel=0.1)
    assert global_.abs().median() > n / 5, "global: uniform over [0, n)"


@pytest.mark.parametrize("sampling", ["mixed", "global"])
def test_output_depends_only_on_the_positions_its_patches_read(sampling: str) -> None:
    """Conv kernel 1: O_i reads exactly I[i]; perturbing anything else leaves it bit-identical."""
    m = mixer(conv_kernel=1, sampling=sampling)
    x, mask = inputs(96, [96, 96])
    y = m(x, mask)
    for i in (0, 17, 95):
        read = read_by(m, i)
        unread = [j for j in range(96) if j not in read]
        assert len(unread) > 60
        for j in unread[:: len(unread) // 5]:
            x2 = x.clone()
            x2[:, j] += 10.0
            assert torch.equal(m(x2, mask)[:, i], y[:, i]), f"O_{i} changed by unread {j}"
        for j in read:
            x2 = x.clone()
            x2[:, j] += 10.0
            assert not torch.allclose(m(x2, mask)[:, i], y[:, i]), f"O_{i} ignores read {j}"


@pytest.mark.parametrize("padding", ["same", "causal"])
@pytest.mark.parametrize("score_norm", ["softmax", "none"])
def test_extra_right_padding_does_not_change_real_outputs(padding: str, score_norm: str) -> None:
    m = mixer(n=96, padding=padding, score_norm=score_norm)
    x, mask = inputs(40, [40, 23])
    garbage = torch.randn(2, 56, D) * 100  # whatever sits at padding positions
    x_long = torch.cat([x, garbage], dim=1)
    mask_long = torch.cat([mask, torch.zeros(2, 56, dtype=torch.bool)], dim=1)
    y, y_long = m(x, mask), m(x_long, mask_long)
    assert torch.isfinite(y_long).all()
    torch.testing.assert_close(y_long[0, :40], y[0, :40])
    torch.testing.assert_close(y_long[1, :23], y[1, :23])


def test_position_whose_patches_all_read_padding_gets_zero_mix() -> None:
    m = mixer(n=96, contains_self=0.0, sampling="global")
    x, mask = inputs(96, [1])  # only position 0 is real; it never reads itself
    O = m.out.bias  # out(0) = the bias: O_0 = 0
    torch.testing.assert_close(m(x, mask)[0, 0], O)


def test_checkpoint_restores_the_index_tables(tmp_path) -> None:
    saved = mixer(seed=1)
    torch.save(saved.state_dict(), tmp_path / "mixer.pt")
    fresh = mixer(seed=2)
    assert not torch.equal(fresh.I, saved.I)
    fresh.load_state_dict(torch.load(tmp_path / "mixer.pt"))
    assert torch.equal(fresh.I, saved.I) and torch.equal(fresh.J, saved.J)
    x, mask = inputs(96, [96, 50])
    assert torch.equal(fresh(x, mask), saved(x, mask))


def test_coarser_scale_rows_equal_a_full_b_repeated_over_blocks_of_positions() -> None:
    coarse = mixer(n=96, scale_rows=3)
    assert coarse.B.shape == (3, D), "R rows of width dv: R * dv parameters"
    with torch.no_grad():
        coarse.B.copy_(torch.randn(3, D, generator=torch.Generator().manual_seed(2)))
    full = mixer(n=96)  # the same seed: the same weights and tables, B with one row per position
    state = {**coarse.state_dict(), "B": coarse.B.detach().repeat_interleave(32, dim=0)}
    full.load_state_dict(state)
    x, mask = inputs(96, [96, 70])
    torch.testing.assert_close(coarse(x, mask), full(x, mask))
    shared = mixer(n=96, scale_rows=1)
    assert shared.B.shape == (1, D), "R = 1: one scale per channel, none per position"


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="sampling='random' is not one of local, global, mixed"):
        mixer(sampling="random")
    with pytest.raises(ValueError, match="patch_size=96 needs 1 <= patch_size < max_len=96"):
        mixer(patch_size=96)
    with pytest.raises(ValueError, match="scale_rows=97 needs 1 <= scale_rows <= max_len=96"):
        mixer(scale_rows=97)


# --- the original LRA IGLOO model --------------------------------------------------------------

CIFAR = dict(  # lra-igloo's longrangearena_cifar10.py
    embedding_dim=None, value_scale=255.0, conv_filters=5, conv_kernel=1, padding="causal",
    num_patches=4000, patch_size=4, stacks=1, incoming_proj=0, transformer_style=False,
    pooling_size=1, dropout=0.25, head_norm="batchnorm", head_dropout=0.25, seed=0,
)  # fmt: skip


def igloo_lra(n: int, **changes):
    torch.manual_seed(0)
    return build_igloo_lra({"net": {**CIFAR, **changes}}, {"max_len": n}, 256, 10).eval()


def test_lra_igloo_cifar_settings_have_132040_trainable_parameters() -> None:
    params = count_parameters(igloo_lra(32 * 32))
    # conv 1*5+5, kernel 4000*4*5 + 4*5 + 4000, BatchNorm 2*4000, Dense 4000*10+10
    assert params == {"total": 132_040, "mixer": 10 + 84_020}


@pytest.mark.parametrize("proj", [0, 3])
def test_igloo_lra_parameters_follow_the_kernel_formula(proj: int) -> None:
    n, P, ps, K, E, r = 64, 50, 4, 6, 7, 4
    net = igloo_lra(
        n, embedding_dim=E, num_patches=P, patch_size=ps, conv_filters=K, conv_kernel=3,
        stacks=2, incoming_proj=proj, transformer_style=True, pooling_size=r, head_norm="none",
    )  # fmt: skip
    d = proj or K
    kernel = P * ps * d + ps * d + P + (K * proj) + K * K + P * (n // r)
    convs = (E * K * 3 + K) + (K * K * 3 + K)
    head = 2 * K * 10 + 10  # two kernels (stacks > 1), K features each
    assert count_parameters(net) == {
        "total": 256 * E + convs + 2 * kernel + head,
        "mixer": convs + 2 * kernel,
    }


def test_igloo_lra_patches_are_sorted_distinct_timesteps_and_restored_from_a_checkpoint() -> None:
    net = igloo_lra(100, num_patches=300, patch_size=6)
    patches = net.encoder.kernels[0].patches
    assert patches.shape == (300, 6) and patches.min() >= 0 and patches.max() < 100
    assert (patches.diff(dim=-1) > 0).all()
    other = igloo_lra(100, num_patches=300, patch_size=6, seed=1)
    assert not torch.equal(other.encoder.kernels[0].patches, patches)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.encoder.kernels[0].patches, patches)


@pytest.mark.parametrize("transformer_style", [False, True])
def test_igloo_lra_pads_to_max_len_and_gives_logits(transformer_style: bool) -> None:
    net = igloo_lra(50, embedding_dim=4, num_patches=20, transformer_style=transformer_style)
    tokens = torch.randint(1, 256, (3, 50))
    tokens[1, 30:] = 0
    logits = net({"input_ids": tokens})
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    torch.testing.assert_close(net({"input_ids": tokens[:, :30]})[1], logits[1])
    with pytest.raises(ValueError, match="exceeds igloo_lra's max_len=50"):
        net({"input_ids": torch.ones(1, 51, dtype=torch.long)})


# --- whole runs -------------------------------------------------------------------------------


def test_model_igloo_trains_and_its_checkpoint_holds_the_tables(runs: Runs) -> None:
    r = runs.train("model=igloo", "logger=csv")
    assert (r["model"], r["steps"]) == ("igloo", 4) and 0.0 <= r["test_acc"] <= 1.0
    assert r["params"]["total"] > r["params"]["mixer"] > 0
    state = torch.load(runs.root / "run/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    saved = state["net.encoder.blocks.0.mixer.I"]
    assert saved.shape == (201, 32, 4)  # listops_small: max_len 200 + CLS
    torch.manual_seed(123)  # a rebuild draws other tables ...
    module = build_module(OmegaConf.create(r["config"]))
    assert not torch.equal(module.net.encoder.blocks[0].mixer.I, saved)
    module.load_state_dict(state)  # ... and the checkpoint brings the trained ones back
    assert torch.equal(module.net.encoder.blocks[0].mixer.I, saved)


def test_model_igloo_lra_trains(runs: Runs) -> None:
    small = ["model.net.embedding_dim=16", "model.net.conv_filters=16", "model.net.num_patches=64"]
    r = runs.train("model=igloo_lra", "logger=csv", "params.match=false", *small)
    assert (r["model"], r["steps"]) == ("igloo_lra", 4) and 0.0 <= r["test_acc"] <= 1.0
    K, P, n = 16, 64, 200
    kernel = P * 4 * K + 4 * K + P + K * K + P * n  # transformer_style, r = 1
    convs = (16 * K * 3 + K) + (K * K * 3 + K)
    assert r["params"]["mixer"] == convs + 2 * kernel
    assert r["params"]["total"] == r["params"]["mixer"] + 16 * 16 + (2 * K * 10 + 10)
    assert r["config"]["model"]["architecture"] == "igloo_lra"
    assert math.isfinite(r["val_acc_best"])


# --- the benchmark's pieces (the benchmark itself is not a test) -----------------------------


def test_benchmark_factory_builds_the_configured_mixers_and_steps() -> None:
    for model in ("igloo", "baseline"):
        step = mixer_step(model, n=64, d_model=16, batch=2, heads=2, threads=1)
        step()  # forward + backward, no error


def test_crossover_is_the_length_from_which_igloo_stays_faster() -> None:
    def points(igloo: list[float], baseline: list[float]):
        return {
            "igloo": {n: {"seconds": s} for n, s in zip((1, 2, 4, 8), igloo, strict=True)},
            "baseline": {n: {"seconds": s} for n, s in zip((1, 2, 4, 8), baseline, strict=True)},
        }

    lengths = [1, 2, 4, 8]
    found = crossover(points([1, 4, 4, 8], [2, 2, 8, 32]), lengths)
    assert found == "igloo is faster from n = 4 on; log-interpolated crossover n ≈ 3"
    assert "every measured length" in crossover(points([1, 1, 1, 1], [2, 2, 2, 2]), lengths)
    assert "not faster" in crossover(points([1, 1, 1, 3], [2, 2, 2, 2]), lengths)
