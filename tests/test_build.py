"""The build layer: composition, the encoder a model gets, device counts, per-device batch."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf

from lra.build import (
    build_datamodule,
    build_net,
    compose,
    configs,
    count,
    device_count,
    encoder_config,
    per_device_batch,
    resolve_encoder,
    with_model,
)


def test_compose_gives_the_command_lines_config() -> None:
    cfg = compose(["task=text", "model=igloo", "seed=3"])
    assert (cfg.task.name, cfg.model.name, cfg.seed) == ("text", "igloo", 3)
    assert cfg.run_name == "text-igloo-s3" and cfg.task.vocab_size == 257
    assert "baseline" in configs("model") and "listops" in configs("task")


def test_the_model_encoder_is_merged_over_the_tasks_and_resolved_into_a_new_config() -> None:
    cfg = compose(["task=image", "model=disentangled"])
    assert cfg.task.encoder.pos_emb == "learned" and cfg.model.encoder.pos_emb == "none"
    assert encoder_config(cfg).pos_emb == "none" and encoder_config(cfg).d_model == 128
    resolved = resolve_encoder(cfg)
    assert resolved.task.encoder.pos_emb == "none" and cfg.task.encoder.pos_emb == "learned"
    assert OmegaConf.to_container(encoder_config(resolved)) == OmegaConf.to_container(
        resolved.task.encoder
    ), "resolving twice changes nothing"
    assert compose(["task=image", "model=baseline"]).task.encoder.pos_emb == "learned"


@pytest.mark.parametrize(
    ("trainer", "cuda", "expected"),
    [
        ({"accelerator": "cpu", "devices": "auto"}, 4, 1),  # GPUs present but not used
        ({"accelerator": "cpu", "devices": 2}, 4, 2),
        ({"accelerator": "auto", "devices": "auto"}, 4, 4),
        ({"accelerator": "auto", "devices": "auto"}, 0, 1),
        ({"accelerator": "gpu", "devices": -1}, 8, 8),
        ({"accelerator": "cuda", "devices": "3"}, 8, 3),
        ({"accelerator": "gpu", "devices": [0, 2]}, 8, 2),
        ({"accelerator": "gpu", "devices": "0,1,"}, 8, 2),
    ],
)
def test_device_count_follows_the_accelerator(trainer, cuda, expected, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    assert device_count(OmegaConf.create(trainer)) == expected


def test_cpu_runs_keep_the_whole_batch_on_a_machine_with_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    cfg = compose(["task=listops", "trainer=cpu", "trainer.devices=auto"])
    assert per_device_batch(cfg) == 32


def test_global_batch_must_divide_over_devices_nodes_and_accumulation() -> None:
    cfg = OmegaConf.create(
        {"task": {"optim": {"batch_size": 32}},
         "trainer": {"devices": 2, "num_nodes": 2, "accumulate_grad_batches": 2}}
    )  # fmt: skip
    assert per_device_batch(cfg) == 4
    cfg.trainer.devices = 3
    with pytest.raises(ValueError, match="batch_size=32 .* does not divide .* = 12"):
        per_device_batch(cfg)


def test_builders_take_the_config_and_leave_it_alone(tmp_path) -> None:
    cfg = compose(["task=listops_small", "model=igloo", f"paths.data_dir={tmp_path}"])
    before = OmegaConf.to_yaml(cfg)
    build_net(cfg)
    dm = build_datamodule(cfg)
    assert dm.batch_size == 64 and dm.max_len == 200
    assert OmegaConf.to_yaml(cfg) == before


def test_an_unknown_task_or_model_names_the_options() -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"Could not find 'model/transformerz'") as e:
        compose(["model=transformerz"])
    assert "baseline" in str(e.value) and "disentangled" in str(e.value)
    with pytest.raises(MissingConfigException, match=r"Could not find 'task/listopz'") as e:
        compose(["task=listopz"])
    assert "listops_small" in str(e.value)


def test_a_mixer_option_may_not_set_an_encoder_width() -> None:
    cfg = compose(["task=listops_small", "+model.mixer.qkv_dim=8"])
    with pytest.raises(
        ValueError, match=r"model.mixer.qkv_dim is set, .* set task.encoder.qkv_dim"
    ):
        build_net(cfg)


def test_a_network_that_cannot_build_on_meta_is_an_error_not_a_fallback(monkeypatch) -> None:
    from torch import nn

    from lra.registry import MIXERS

    class RealTensorsOnly(nn.Module):
        def __init__(self, d_model, num_heads, qkv_dim, attn_dropout=0.0, max_len=None):
            super().__init__()
            if torch.get_default_device().type == "meta":
                raise RuntimeError("needs real tensors")
            self.proj = nn.Linear(d_model, d_model)

        def forward(self, x, mask):
            return self.proj(x)

    MIXERS.names()
    monkeypatch.setitem(MIXERS._entries, "real_only", RealTensorsOnly)
    cfg = with_model(
        compose(["task=listops_small"]), {"name": "real_only", "mixer": {"name": "real_only"}}
    )
    with pytest.raises(RuntimeError, match="needs real tensors"):
        count(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("task.max_len=0", "task.max_len=0: must be an integer >= 1"),
        ("task.optim.batch_size=abc", "task.optim.batch_size='abc': must be an integer >= 1"),
        ("task.optim.lr=-0.001", "task.optim.lr=-0.001: must be a number > 0"),
        ("task.encoder.dropout=1.5", "task.encoder.dropout=1.5: must be a probability in [0, 1)"),
        ("task.optim.grad_clip=0", "task.optim.grad_clip=0: must be null or > 0"),
        ("task.encoder.mlp_dim=null", "task.encoder.mlp_dim=None: must be an integer >= 1"),
    ],
)
def test_numeric_keys_are_checked_once_before_anything_is_built(override, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compose(["task=listops_small", override])


def test_the_command_line_config_is_checked_too(tmp_path) -> None:
    from lra.train import train

    cfg = compose(["task=listops_small", f"paths.output_dir={tmp_path}"])
    cfg.task.max_len = 0  # as Hydra hands it to train(), past compose()
    with pytest.raises(ValueError, match="task.max_len=0: must be an integer >= 1"):
        train(cfg)


@pytest.mark.parametrize(
    ("overrides", "padded"),
    [
        (["task=listops"], True),
        (["task=text"], True),
        (["task=image"], False),
        (["task=pathfinder"], False),
        (["task=pathx"], False),
        (["task=image", "task.data.pixel_offset=0"], True),  # LRA's: black pixels are token 0
        (["task=image", "+task.encoder.padded=true"], True),  # a config that says wins
    ],
)
def test_the_encoder_is_padded_only_where_the_tasks_batches_can_hold_padding(
    overrides: list[str], padded: bool
) -> None:
    from lra.build import encoder_config

    assert encoder_config(compose(overrides)).padded is padded


def test_an_encoder_without_padding_gives_its_mixers_no_mask(monkeypatch) -> None:
    from lra.build import build_net

    seen = []
    net = build_net(compose(["task=pathfinder", "task.encoder.num_layers=1", "params.match=false"]))
    mixer = net.encoder.blocks[0].mixer
    forward = mixer.forward
    monkeypatch.setattr(
        mixer, "forward", lambda x, mask, **kw: seen.append(mask) or forward(x, mask, **kw)
    )
    tokens = torch.randint(1, 257, (2, 1024))
    net({"input_ids": tokens})
    assert seen == [None]


def test_ddp_stops_broadcasting_buffers_only_where_they_are_constant() -> None:
    from lra.build import build_net, strategy_for

    cfg = compose(["task=listops_small", "trainer=ddp_sim", "model=igloo", "params.match=false"])
    strategy = strategy_for(cfg, build_net(cfg))
    assert strategy._ddp_kwargs == {"broadcast_buffers": False}, "IGLOO's tables are constant"
    lra_igloo = compose(["task=image", "trainer=ddp_sim", "model=igloo_lra", "params.match=false",
                         "model.net.head_norm=batchnorm"])  # fmt: skip
    assert strategy_for(lra_igloo, build_net(lra_igloo)) is None, "BatchNorm's statistics move"
    assert strategy_for(compose(["trainer=cpu"]), build_net(compose([]))) is None


def test_compile_wraps_the_network_and_keeps_its_weights_where_they_were(monkeypatch) -> None:
    from lra.build import build_module

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net: compiled.append(net) or net)
    plain = build_module(compose(["task=listops_small", "params.match=false"]))
    module = build_module(compose(["task=listops_small", "params.match=false", "compile=true"]))
    assert compiled == [module.net] and plain.run_net is plain.net
    assert list(module.state_dict()) == list(plain.state_dict()), "checkpoints unchanged"
