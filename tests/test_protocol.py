"""LRA's released code as switches (task.encoder.init, cls_position, padding, the Retrieval head,
eval intervals), the `protocol` group that sets them all, and the `repro/lra_*` recipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from conftest import ROOT
from lra_files import write_all_tasks
from omegaconf import OmegaConf

from lra.build import compose, configs, count
from lra.models.attention.baseline import SoftmaxAttention
from lra.models.classifier import build_classifier
from lra.models.init import TRUNCATED_STD

ENCODER = dict(max_len=24, d_model=32, num_layers=2, num_heads=2, qkv_dim=32, mlp_dim=64,
               dropout=0.0, attn_dropout=0.0, pos_emb="sinusoidal", pooling="cls")  # fmt: skip


def net(mixer: dict[str, Any] | None = None, seed: int = 0, head: str = "single", **encoder: Any):
    interaction = encoder.pop("interaction", "nli")
    torch.manual_seed(seed)
    return build_classifier(
        {**ENCODER, **encoder}, mixer or {"name": "baseline", "bias": None}, vocab_size=16,
        num_classes=10, head=head, interaction=interaction,
    ).eval()  # fmt: skip


def tokens(lengths: list[int], n: int) -> torch.Tensor:
    x = torch.randint(1, 16, (len(lengths), n), generator=torch.Generator().manual_seed(1))
    for i, length in enumerate(lengths):
        x[i, length:] = 0
    return x


def xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


# --- init: lra | torch --------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["baseline", "disentangled"])
def test_lra_init_attention_has_no_bias_and_torch_init_has(model: str) -> None:
    for init, biased in (("lra", False), ("torch", True)):
        cfg = compose(["task=listops_small", f"model={model}", f"task.encoder.init={init}"])
        with torch.device("meta"):
            from lra.build import build_net

            mixer = build_net(cfg).encoder.blocks[0].mixer
        linears = [m for m in mixer.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all((m.bias is not None) == biased for m in linears), (init, model)


def test_lra_init_gives_xavier_dense_layers_lecun_head_and_a_zero_cls() -> None:
    lra = net(init="lra", d_model=256, qkv_dim=256, mlp_dim=512)
    block = lra.encoder.blocks[0]
    qkv = block.mixer.qkv.weight  # [3 * 256, 256]: q, k, v, each with its own fans
    for w in qkv.chunk(3):
        assert w.std().item() == pytest.approx(xavier_std(256, 256), rel=0.1)
    assert block.mixer.out.weight.std().item() == pytest.approx(xavier_std(256, 256), rel=0.1)
    assert block.mlp[0].weight.std().item() == pytest.approx(xavier_std(256, 512), rel=0.1)
    assert block.mlp[3].weight.std().item() == pytest.approx(xavier_std(512, 256), rel=0.1)
    assert block.mlp[0].bias.abs().max().item() < 1e-4, "biases ~0 (N(0, 1e-6))"
    head = lra.head[0]
    assert head.weight.std().item() == pytest.approx(math.sqrt(1 / 256), rel=0.1)
    assert head.weight.abs().max().item() <= 2 * math.sqrt(1 / 256) / TRUNCATED_STD + 1e-6
    assert head.bias.abs().max().item() == 0.0
    assert lra.encoder.cls.abs().max().item() == 0.0, "LRA's CLS is initialised to zeros"
    torch_init = net(mixer={"name": "baseline", "bias": None}, init="torch", d_model=256,
                     qkv_dim=256, mlp_dim=512)  # fmt: skip
    w = torch_init.encoder.blocks[0].mlp[0].weight  # PyTorch: U(±1/sqrt(fan_in))
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 256), rel=0.1)
    assert torch_init.encoder.cls.std().item() == pytest.approx(0.02, rel=0.5)


def test_an_unknown_init_is_named() -> None:
    with pytest.raises(ValueError, match="task.encoder.init must be lra .* or torch, not 'xavier'"):
        net(init="xavier")


# --- cls_position -------------------------------------------------------------------------------


def embedded(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the first block gets: the encoder's input after embedding, CLS and positions."""
    seen = {}
    hook = model.encoder.drop.register_forward_hook(lambda m, i, o: seen.update(x=o))
    model({"input_ids": x})
    hook.remove()
    return seen["x"]


def test_the_cls_is_at_position_0_and_the_tokens_at_1_to_n() -> None:
    model = net(cls_position=True)
    x = tokens([5, 7], 7)
    h = embedded(model, x)  # [B, 1 + n, D]
    pos = model.encoder.pos
    assert pos.shape[0] == 24 + 1
    torch.testing.assert_close(h[:, 0], pos[0].expand(2, -1), msg="CLS (zeros) + position 0")
    torch.testing.assert_close(h[:, 1:], model.encoder.embed(x) + pos[1:8])
    apart = net(cls_position=False)
    h = embedded(apart, x)
    torch.testing.assert_close(h[:, 0], apart.encoder.cls[0].expand(2, -1), msg="no position")
    torch.testing.assert_close(h[:, 1:], apart.encoder.embed(x) + apart.encoder.pos[:7])


# --- padding: real | lra ------------------------------------------------------------------------


def test_lra_padding_masks_padded_queries_uniformly_over_every_position() -> None:
    torch.manual_seed(0)
    mixer = SoftmaxAttention(d_model=8, num_heads=2, qkv_dim=8, mask_queries=True).eval()
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([[True, True, True, False, False, False]])
    y = mixer(x, mask)
    v = mixer.qkv(x).view(1, 6, 3, 2, 4)[:, :, 2]  # [B, n, h, d]
    uniform = mixer.out(v.mean(1).reshape(1, 8))  # every position, padding included
    torch.testing.assert_close(y[0, 3:], uniform.expand(3, -1))
    plain = SoftmaxAttention(d_model=8, num_heads=2, qkv_dim=8).eval()
    plain.load_state_dict(mixer.state_dict())
    torch.testing.assert_close(plain(x, mask)[:, :3], y[:, :3], msg="real queries: the same")


def test_lra_padding_means_over_every_position_and_learns_the_padding_embedding() -> None:
    x = tokens([7, 12], 12)
    padded = torch.cat([x, torch.zeros(2, 12, dtype=torch.long)], dim=1)
    real = net(pooling="mean", padding="real")
    torch.testing.assert_close(real({"input_ids": x}), real({"input_ids": padded}))
    assert real.encoder.embed.padding_idx == 0
    lra = net(pooling="mean", padding="lra")
    assert lra.encoder.embed.padding_idx is None, "LRA's padding embedding is a learned row"
    assert not torch.allclose(lra({"input_ids": x}), lra({"input_ids": padded})), (
        "MEAN over every position: more padding moves the pooled vector, as in LRA's code"
    )


def test_lra_padding_masks_the_cls_where_the_first_token_is_padding() -> None:
    model = net(padding="lra")
    seen = {}
    model.encoder.blocks[0].register_forward_pre_hook(lambda m, a: seen.update(mask=a[1]))
    model({"input_ids": torch.tensor([[0, 3, 4, 0], [5, 6, 0, 0]])})
    assert seen["mask"].tolist() == [
        [False, False, True, True, False],
        [True, True, True, False, False],
    ]


def test_lra_padding_refuses_a_mixer_without_mask_queries(monkeypatch) -> None:
    from lra.registry import MIXERS

    class KeysOnly(torch.nn.Module):
        def __init__(self, d_model, num_heads, qkv_dim, attn_dropout=0.0, max_len=None):
            super().__init__()
            self.proj = torch.nn.Linear(d_model, d_model)

        def forward(self, x, mask):
            return self.proj(x)

    MIXERS.names()
    monkeypatch.setitem(MIXERS._entries, "keys_only", KeysOnly)
    assert net({"name": "keys_only"}, padding="real") is not None
    with pytest.raises(ValueError, match="mixer 'keys_only' takes no mask_queries"):
        net({"name": "keys_only"}, padding="lra")


# --- the Retrieval head -------------------------------------------------------------------------


def test_retrieval_head_concat_or_nli_and_first_position_pooling() -> None:
    concat = net(head="dual", pooling="first", interaction="concat")
    assert concat.encoder.cls is None, "LRA's dual encoder has no CLS"
    assert concat.head.mlp[0].in_features == 2 * 32, "[u, v]"
    nli = net(head="dual", pooling="cls", interaction="nli")
    assert nli.encoder.cls is not None and nli.head.mlp[0].in_features == 4 * 32
    u = concat.encoder(tokens([5, 9], 9))
    seen = {}
    concat.encoder.norm.register_forward_hook(lambda m, i, o: seen.update(x=o))
    concat.encoder(tokens([5, 9], 9))
    torch.testing.assert_close(u, seen["x"][:, 0], msg="the first token's position is pooled")
    with pytest.raises(ValueError, match="task.head_interaction must be one of concat, nli"):
        net(head="dual", interaction="dot")


# --- each switch changes what it names and nothing else ------------------------------------------


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def test_padding_switch_changes_only_the_padding_row_and_the_pooling() -> None:
    real, lra = state(net(padding="real")), state(net(padding="lra"))
    assert real.keys() == lra.keys()
    for k in real:
        if k == "encoder.embed.weight":
            torch.testing.assert_close(real[k][1:], lra[k][1:])
            assert real[k][0].abs().sum() == 0 and lra[k][0].abs().sum() > 0
        else:
            torch.testing.assert_close(real[k], lra[k], msg=k)


def test_cls_position_switch_changes_only_the_positions() -> None:
    a, b = net(cls_position=True), net(cls_position=False)
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)  # the same weights, another position
    x = tokens([5, 9], 9)
    assert not torch.allclose(a({"input_ids": x}), b({"input_ids": x}))


def test_interaction_switch_changes_only_the_heads_first_layer() -> None:
    sa = state(net(head="dual", pooling="first", interaction="concat"))
    sb = state(net(head="dual", pooling="first", interaction="nli"))
    assert sa.keys() == sb.keys()
    differ = {k for k in sa if sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k])}
    assert {k.split(".")[0] for k in differ} <= {"head"}
    assert "head.mlp.0.weight" in differ and not any(k.startswith("encoder") for k in differ)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ("task.encoder.init=torch", "task.encoder.init", "torch"),
        ("task.encoder.cls_position=false", "task.encoder.cls_position", False),
        ("task.encoder.padding=lra", "task.encoder.padding", "lra"),
        ("test_checkpoint=best", "test_checkpoint", "best"),
        ("task.eval.every_n_steps=50", "task.eval.every_n_steps", 50),
    ],
)
def test_a_switch_changes_its_key_and_no_other(override: str, key: str, value: Any) -> None:
    base, changed = resolved("task=listops"), resolved("task=listops", override)
    assert diff(base, changed) == {key: value}


def resolved(*overrides: str) -> dict[str, Any]:
    """The config as composed; values derived by interpolation (the trainer's validation
    interval from task.eval) stay interpolations, so a switch shows as its own key only."""
    return OmegaConf.to_container(compose(list(overrides)), resolve=False)


def diff(a: Any, b: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = {}
        for k in a.keys() | b.keys():
            out.update(diff(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return {} if a == b else {prefix[:-1]: b}


# --- the protocol group -------------------------------------------------------------------------

LRA_CODE = {  # what protocol=lra_code changes of each task's defaults
    "listops": {"task.encoder.padding": "lra", "task.eval.every_n_steps": 50},
    "text": {"task.encoder.padding": "lra", "task.eval.every_n_steps": 100, "task.max_len": 1000},
    "retrieval": {"task.encoder.padding": "lra", "task.eval.every_n_steps": 100},
    "image": {"task.encoder.padding": "lra", "task.data.pixel_offset": 0},
    "pathfinder": {"task.encoder.padding": "lra", "task.data.pixel_offset": 0},
    "pathx": {"task.encoder.padding": "lra", "task.data.pixel_offset": 0},
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(LRA_CODE))
def test_lra_code_protocol_sets_lras_code_for_the_task(task: str) -> None:
    base = resolved(f"task={task}")
    for how in ("protocol=lra_code", "experiment=lra_code"):
        lra = resolved(f"task={task}", how)
        assert diff(base, lra) == LRA_CODE[task], how
    cfg = compose([f"task={task}", "protocol=lra_code"])
    assert cfg.task.encoder.init == "lra" and cfg.task.encoder.cls_position is True
    assert cfg.test_checkpoint == "last"
    if task == "retrieval":
        assert cfg.task.head_interaction == "concat" and cfg.task.encoder.pooling == "first"


# --- the recipes -------------------------------------------------------------------------------

LRA_RECIPES = [r for r in configs("experiment/repro") if r.startswith("lra_")]
PUBLISHED = {"listops": 36.37, "text": 64.27, "retrieval": 57.46, "image": 42.44,
             "pathfinder": 71.40, "pathx": None}  # fmt: skip


def test_every_lra_task_has_a_recipe() -> None:
    assert {f"lra_{t}" for t in PUBLISHED} | {"lra_pathfinder_working"} <= set(LRA_RECIPES)


@pytest.mark.parametrize("recipe", LRA_RECIPES)
def test_lra_recipe_composes_lras_transformer_with_its_published_figure(recipe: str) -> None:
    cfg = compose([f"experiment=repro/{recipe}"])
    task = cfg.task.name
    assert cfg.model.name == "baseline" and cfg.params.match is False
    assert cfg.reference.test_acc == PUBLISHED[task] and "LRA" in cfg.reference.source
    assert cfg.task.encoder.padding == "lra" and cfg.test_checkpoint == "last"
    plain = compose([f"task={task}", "protocol=lra_code"])
    if recipe == "lra_pathfinder_working":  # LRA issues #37, #60
        e = cfg.task.encoder
        assert (e.num_layers, e.num_heads, e.d_model, e.qkv_dim, e.mlp_dim) == (1, 8, 128, 64, 128)
        assert count(cfg)["total"] > count(plain)["total"]
    else:
        assert count(cfg) == count(plain), "the recipe is the task under LRA's code"


@pytest.mark.slow
def test_every_lra_recipe_trains_a_fast_dev_run_through_the_cli(tmp_path) -> None:
    write_all_tasks(tmp_path / "data")
    args = [sys.executable, "-m", "lra.train", "--multirun",
            "experiment=" + ",".join(f"repro/{r}" for r in LRA_RECIPES),
            "trainer=cpu", "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false",
            "logger=none", "task.data.num_workers=0", "task.optim.batch_size=2",
            "task.max_len=256",  # the recipes' widths; the sequences cut for CPU time
            f"paths.data_dir={tmp_path / 'data'}", f"paths.log_dir={tmp_path / 'outputs'}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/results.json")]
    assert len(results) == len(LRA_RECIPES)
    for r in results:
        assert r["status"] == "finished" and r["steps"] == 1 and r["tested"] == "last"
        assert r["config"]["reference"]["source"].startswith("LRA")
        assert r["config"]["task"]["encoder"]["padding"] == "lra"
