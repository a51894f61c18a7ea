"""experiment=repro/igloo_*: lra-igloo's published models, rebuilt with its Keras settings."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import CLI, ok
from lra_files import write_all_tasks
from torch import nn

from lra.build import build_module, build_net, compose, count
from lra.data.listops import END, VOCAB, tokenize
from lra.models.igloo_lra import IglooKernel, IglooLRAPair
from lra.schedules import schedule

# Trainable parameters of lra-igloo's Keras models, as tf-keras counts them (model.summary()):
# the scripts' settings built with its mandarin_common_tf2.IGLOO1D_BLOCK
COUNTS = {
    "listops": 18_316_714,  # two stacks (its README's 18.3M)
    "listops_1stack": 9_162_458,  # its current script
    "image": 132_040,
    "text": 3_496_474,
    "retrieval": 2_196_390,
    "pathfinder": 57_920,
}
# lra-igloo's l2_reg per script: Keras' l2(c) is Adam weight decay 2c
L2 = {"listops": 0.02, "listops_1stack": 2e-4, "image": 1e-6, "text": 0.005,
      "retrieval": 0.01, "pathfinder": 1e-6}  # fmt: skip
REFERENCE = {"listops": 39.0, "listops_1stack": 39.0, "image": 47.0, "text": 84.5,
             "retrieval": 75.5, "pathfinder": 76.5}  # fmt: skip


def recipe(name: str, *overrides: str):
    return compose([f"experiment=repro/igloo_{name}", *overrides])


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_each_recipe_builds_with_lra_igloos_parameter_count(name: str) -> None:
    cfg = recipe(name)
    assert count(cfg)["total"] == COUNTS[name]
    assert cfg.params.match is False and cfg.model.architecture == "igloo_lra"
    assert cfg.reference.test_acc == REFERENCE[name]
    assert cfg.reference.source.startswith("lra-igloo (Sourkov), ")


@pytest.fixture(scope="module")
def text_net() -> nn.Module:
    """The IMDB recipe at max_len 256 (only W_QK's width shrinks): Keras' init, real weights."""
    torch.manual_seed(0)
    return build_net(recipe("text", "task.max_len=256"))


def test_keras_batchnorm_has_eps_1e_3_and_momentum_0_01_in_torchs_convention() -> None:
    net = build_net(recipe("image"))
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 1 and (norms[0].eps, norms[0].momentum) == (1e-3, 0.01)
    default = build_net(compose(["task=image", "model=igloo_lra", "params.match=false",
                                 "model.net.head_norm=batchnorm"]))  # fmt: skip
    bn = next(m for m in default.modules() if isinstance(m, nn.BatchNorm1d))
    assert (bn.eps, bn.momentum) == (1e-5, 0.1), "without the recipe: PyTorch's defaults"


def test_keras_init_embedding_uniform_005_and_glorot_dense_conv_and_w_mult(text_net) -> None:
    E = text_net.encoder.embed.weight
    assert E.abs().max() <= 0.05 and E.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.1)
    dense = text_net.head[1]  # Dense(80) over the 512 features
    assert dense.weight.shape == (80, 512) and torch.all(dense.bias == 0)
    assert dense.weight.std().item() == pytest.approx(math.sqrt(2 / (512 + 80)), rel=0.1)
    conv = text_net.encoder.convs[0]  # Keras' Conv1D kernel [3, 256, 256]: fans 3 x 256 each
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (768 + 768)), rel=0.1)
    assert torch.all(conv.bias == 0)
    kernel = text_net.encoder.kernels[0]
    P, ps, d = kernel.W_mult.shape  # Keras' [1, P, ps, d']: fans P ps and P d'
    limit = math.sqrt(6 / (P * ps + P * d))
    assert kernel.W_mult.abs().max() <= limit
    assert kernel.W_mult.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)


def optimizer_of(module) -> torch.optim.Optimizer:
    module._trainer = SimpleNamespace(max_steps=-1)  # configure_optimizers reads max_steps
    return module.configure_optimizers()["optimizer"]


@pytest.mark.parametrize("name", ["image", "text", "retrieval", "pathfinder"])
def test_recipe_optimiser_is_adam_with_2c_on_the_igloo_kernels_and_0_elsewhere(name: str) -> None:
    short = [] if name in ("image", "pathfinder") else ["task.max_len=64"]  # only W_QK shrinks
    module = build_module(recipe(name, *short))
    opt = optimizer_of(module)
    assert type(opt) is torch.optim.Adam
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-7
    kernels = [m for m in module.net.modules() if isinstance(m, IglooKernel)]
    assert len(kernels) == {"text": 2, "retrieval": 2}.get(name, 1)
    decayed, rest = opt.param_groups
    assert decayed["weight_decay"] == 2 * L2[name] and rest["weight_decay"] == 0.0
    in_kernels = {id(p) for k in kernels for p in k.parameters()}
    assert {id(p) for p in decayed["params"]} == in_kernels
    assert {id(p) for p in rest["params"]} == {id(p) for p in module.parameters()} - in_kernels


def test_every_other_model_and_task_still_gets_adamw_with_the_tasks_decay_on_all() -> None:
    for overrides in (["task=listops_small", "model=baseline"],
                      ["task=listops_small", "model=igloo_lra", "params.match=false",
                       "model.net.embedding_dim=8", "model.net.conv_filters=8",
                       "model.net.num_patches=8"],
                      ["task=image", "model=igloo", "params.match=false"]):  # fmt: skip
        cfg = compose(overrides)
        module = build_module(cfg)
        opt = optimizer_of(module)
        assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
        assert opt.param_groups[0]["weight_decay"] == cfg.task.optim.weight_decay
        assert opt.param_groups[0]["params"] == list(module.parameters())


def test_l2_groups_need_adam_and_the_error_says_so() -> None:
    module = build_module(recipe("image", "task.optim.optimizer=adamw"))
    with pytest.raises(ValueError, match="set task.optim.optimizer=adam"):
        optimizer_of(module)


def test_retrieval_schedule_is_keras_inverse_time_decay() -> None:
    cfg = recipe("retrieval")
    o = cfg.task.optim
    f = schedule(o.schedule, o.warmup_steps, o.max_steps, o.decay_rate)
    assert f(1) == 1.0, "Keras' first update (iterations 0) runs at lr"
    assert f(2001) == pytest.approx(1 / (1 + 5e-4 * 2000))


def test_unshared_aan_towers_have_their_own_weights_and_share_the_embedding() -> None:
    torch.manual_seed(0)
    net = build_net(recipe("retrieval", "task.max_len=64"))
    assert isinstance(net, IglooLRAPair)
    a, b = net.encoder.towers
    assert a.embed is b.embed, "one Embedding feeds both towers, as lra-igloo's"
    assert not torch.equal(a.convs[0].weight, b.convs[0].weight)
    assert not torch.equal(a.kernels[0].W_mult, b.kernels[0].W_mult)
    net.eval()
    g = torch.Generator().manual_seed(1)
    doc1, doc2 = (
        torch.randint(1, 257, (2, 64), generator=g),
        torch.randint(1, 257, (2, 64), generator=g),
    )
    logits = net({"input_ids_1": doc1, "input_ids_2": doc2})
    swapped = net({"input_ids_1": doc2, "input_ids_2": doc1})
    assert logits.shape == (2, 2) and not torch.allclose(logits, swapped, atol=1e-6), (
        "the documents go through different towers (shared towers: u - v only changes sign)"
    )
    logits.sum().backward()
    assert a.kernels[0].W_mult.grad.abs().sum() > 0 and b.kernels[0].W_mult.grad.abs().sum() > 0


def test_bracket_free_listops_tokenizer_yields_no_bracket_tokens() -> None:
    source = "( ( ( [MAX 2 ) ( ( [MIN 4 ) 1 ) ] ) ) ] )"
    kept, dropped = tokenize(source), tokenize(source, brackets=False)
    assert kept.count(VOCAB[END]) == 2
    assert VOCAB[END] not in dropped and dropped == [t for t in kept if t != VOCAB[END]]
    assert recipe("listops").task.data.brackets is False


# --- fast_dev_run through the real CLI: one step of each recipe on a few rows -----------------
SMOKE = ["trainer=cpu", "trainer.fast_dev_run=1", "trainer.enable_progress_bar=false",
         "logger=none", "task.data.num_workers=0", "task.optim.batch_size=2"]  # fmt: skip
DATA = {
    "listops": [],  # the release rows write_all_tasks puts under lra_release/listops-1000
    "image": [],
    "text": [],
    "retrieval": [],
    # curv_baseline is not among the sample files: the harness's generator makes 10 images
    "pathfinder": [
        "task.data.generate=true",
        "task.data.generator.n=10",
        "task.data.generator.batch_size=5",
    ],  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(DATA))
def test_recipe_trains_a_fast_dev_run_through_the_cli(cli: CLI, name: str) -> None:
    write_all_tasks(cli.data_dir)
    t0 = time.time()
    ok(cli.run(f"experiment=repro/igloo_{name}", *SMOKE, *DATA[name], tiny=False,
               env={"HF_HUB_OFFLINE": "1"}))  # fmt: skip
    r = cli.results()
    assert r["params"]["total"] == COUNTS[name], "the recipe's full model, at its full max_len"
    assert r["steps"] == 1 and 0.0 <= r["test_acc"] <= 1.0
    print(f"repro/igloo_{name}: fast_dev_run {time.time() - t0:.1f} s")
