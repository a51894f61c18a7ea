"""The build layer: one way to compose a config, and the builders every command uses.

    command (lra.train, lra.params, lra.data.prepare, lra.bench)
      -> compose(overrides)                    the Hydra config, as `python -m lra.train` gets it
      -> lra.matching.match_parameters(cfg)    the run config: knobs turned, params.* filled in,
                                               task.encoder as the network is built with it
      -> build_datamodule / build_net / build_module

No module here reaches up to a command, and nothing edits the config it is handed: a function that
changes a config returns a new one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from lra.config import CONF_DIR  # also registers the ${lra.*} resolvers
from lra.data.base import LRADataModule
from lra.models.classifier import count_parameters
from lra.module import LRAClassifier
from lra.registry import ARCHITECTURES, TASKS


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """`conf/config.yaml` with command-line style overrides (`task=text`, `seed=1`, ...), as
    `python -m lra.train` composes it. Outside a Hydra run there is no run directory: to train the
    result in process, also pass `paths.output_dir=DIR`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config",
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )
    validate(cfg)
    return cfg


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and ok(v)


ABSENT = object()
# key -> (check, what it must be); keys absent from a config are not checked
NUMERIC_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (_integer(-(2**63)), "an integer"),
    "task.max_len": (_integer(1), "an integer >= 1 (tokens per sequence)"),
    **{
        f"task.encoder.{k}": (_integer(1), "an integer >= 1")
        for k in ("num_layers", "num_heads", "d_model", "qkv_dim", "mlp_dim")
    },  # fmt: skip
    **{
        f"task.encoder.{k}": (_number(lambda v: 0 <= v < 1), "a probability in [0, 1)")
        for k in ("dropout", "attn_dropout")
    },  # fmt: skip
    "task.optim.batch_size": (_integer(1), "an integer >= 1 (the global batch)"),
    "task.optim.lr": (_number(lambda v: v > 0), "a number > 0 (the base learning rate)"),
    "task.optim.warmup_steps": (_integer(0), "an integer >= 0"),
    "task.optim.max_steps": (_integer(1), "an integer >= 1"),
    "task.optim.weight_decay": (_number(lambda v: v >= 0), "a number >= 0"),
    "task.optim.grad_clip": (lambda v: v is None or _number(lambda x: x > 0)(v), "null or > 0"),
    "params.tolerance": (_number(lambda v: v >= 0), "a number >= 0 (relative)"),
    "checkpoint_every_n_steps": (_integer(1), "an integer >= 1"),
    "test_checkpoint": (
        lambda v: v in ("last", "best"),
        "last (the final weights, as LRA's code tests) or best (the best val/acc checkpoint)",
    ),  # fmt: skip
}


def validate(cfg: DictConfig) -> None:
    """Check the config's numeric keys once, before anything is built: the error names the key."""
    for key, (ok, what) in NUMERIC_KEYS.items():
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT and not ok(value):
            raise ValueError(f"{key}={value!r}: must be {what}")


def configs(group: str) -> list[str]:
    """The options of a config group: `configs("model")` -> ["baseline", "disentangled", ...]."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def sample_tasks() -> list[str]:
    """The task configs a smoke run can train on the official-layout sample files
    (lra.data.samples): all but the CPU verdict's `*_cpu` tasks, which generate their own data at
    full size first (minutes)."""
    return [t for t in configs("task") if not t.endswith("_cpu")]


def with_model(cfg: DictConfig, model: str | Mapping[str, Any]) -> DictConfig:
    """A copy of `cfg` whose `model` is `conf/model/<model>.yaml` (or the mapping given)."""
    other = copy.deepcopy(cfg)
    node = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml") if isinstance(model, str) else model
    with open_dict(other):
        other.model = OmegaConf.create(node)
    return other


def encoder_config(cfg: DictConfig) -> DictConfig:
    """The encoder the network gets: `task.encoder`, with the model's `model.encoder` merged over
    it (disentangled: `pos_emb: none`), and `padded`: whether the task's batches can hold
    padding (its DataModule's `pads`), unless the config says."""
    merged = OmegaConf.merge(cfg.task.encoder, cfg.model.get("encoder") or {})
    if "padded" not in merged:
        with open_dict(merged):
            merged.padded = TASKS.get(cfg.task.family).pads(cfg.task.get("data") or {})
    return merged


def resolve_encoder(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose `task.encoder` is `encoder_config(cfg)`, so the config that is logged
    shows the encoder that is built (`model.encoder` stays, as the record of what the model
    changed; merging it again changes nothing)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.task.encoder = encoder_config(cfg)
    return out


def device_count(trainer: Mapping[str, Any]) -> int:
    """How many processes per node Lightning starts for `trainer.devices` on its `accelerator`:
    an int, a list of ids or "0,1"; "auto" (or -1) is every GPU on a GPU accelerator (`auto`
    with CUDA available, `gpu`, `cuda`) and 1 on the CPU, as Lightning counts them."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, list | tuple | ListConfig):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text.isdigit() and int(text) > 0:
        return int(text)
    accelerator = str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return max(1, torch.cuda.device_count()) if on_gpu else 1


def per_device_batch(cfg: DictConfig) -> int:
    """The task's batch is global: split it over devices x nodes x gradient accumulation."""
    t = cfg.trainer
    split = device_count(t) * int(t.get("num_nodes", 1)) * int(t.get("accumulate_grad_batches", 1))
    batch = int(cfg.task.optim.batch_size)
    if batch % split:
        raise ValueError(
            f"task.optim.batch_size={batch} (the global batch) does not divide over "
            f"trainer.devices x trainer.num_nodes x trainer.accumulate_grad_batches = {split}: "
            f"choose a batch size that is a multiple of {split}, or other device counts"
        )
    return batch // split


def build_datamodule(cfg: DictConfig) -> LRADataModule:
    data = OmegaConf.to_container(cfg.task.data, resolve=True)
    return TASKS.get(cfg.task.family)(
        task_name=cfg.task.name,
        cache_dir=cfg.paths.cache_dir,
        max_len=cfg.task.max_len,
        batch_size=per_device_batch(cfg),
        shuffle_seed=cfg.seed,
        **data,
    )


def build_net(cfg: DictConfig) -> torch.nn.Module:
    """The network the task trains. The model names a whole architecture; by default
    (`encoder`) the shared encoder with the task's shape and head and the model's mixer."""
    build = ARCHITECTURES.get(cfg.model.get("architecture", "encoder"))
    return build(
        OmegaConf.to_container(cfg.model, resolve=True),
        OmegaConf.to_container(encoder_config(cfg), resolve=True),
        vocab_size=cfg.task.vocab_size,
        num_classes=cfg.task.num_classes,
        head=cfg.task.get("head", "single"),
        interaction=cfg.task.get("head_interaction", "nli"),
    )


def strategy_for(cfg: DictConfig, net: torch.nn.Module) -> Any:
    """Lightning's strategy for `trainer.strategy`: for "ddp", DDP with its per-step buffer
    broadcast off where every buffer is constant (IGLOO's index tables, the sinusoidal table):
    no network with BatchNorm's running statistics. Otherwise the config's own (None)."""
    if str(cfg.trainer.get("strategy")) != "ddp":
        return None
    if any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in net.modules()):
        return None
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(broadcast_buffers=False)


def build_module(cfg: DictConfig) -> LRAClassifier:
    optim = OmegaConf.to_container(cfg.task.optim, resolve=True)
    return LRAClassifier(build_net(cfg), num_classes=cfg.task.num_classes, optim=optim,
                         compile=bool(cfg.get("compile", False)))  # fmt: skip


def count(cfg: DictConfig) -> dict[str, int]:
    """Trainable parameters of the network `cfg` builds, built on the meta device: no memory, no
    time, and no draw from torch's generator (the run's weights stay the same). Every mixer and
    architecture must build there (lra/models/attention/__init__.py, the mixer contract)."""
    with torch.device("meta"):
        net = build_net(cfg)
    return count_parameters(net)


def training_flops(cfg: DictConfig) -> int | None:
    """FLOPs of one training step (forward, loss and backward) of the network `cfg` builds, at
    the task's global batch and full length (`task.optim.batch_size` x `task.max_len`), as
    `torch.utils.flop_counter` counts them (matrix products, convolutions, attention; gathers and
    element-wise work are free). Built and run on the meta device: no memory, no time to speak
    of, no draw from torch's generator. None where the network cannot run there."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    B, n = int(cfg.task.optim.batch_size), int(cfg.task.max_len)
    names = TASKS.get(cfg.task.family).inputs
    counter = FlopCounterMode(display=False)
    try:
        with torch.device("meta"):
            net = build_net(cfg)
            batch = {k: torch.ones(B, n, dtype=torch.long) for k in names}
            with counter:
                F.cross_entropy(net(batch), torch.zeros(B, dtype=torch.long)).backward()
    except (RuntimeError, NotImplementedError) as e:  # an op without a meta kernel
        import logging

        logging.getLogger(__name__).warning("training FLOPs not counted: %s", e)
        return None
    return int(counter.get_total_flops())
