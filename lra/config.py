"""Where the config tree is, and the OmegaConf resolvers, so derived values are computed from code,
never typed twice."""

from __future__ import annotations

import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from lra.registry import TASKS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


LAST = Path("checkpoints") / "last.ckpt"  # a run directory's latest checkpoint
HYDRA_SUBDIR = ".hydra"
STAGE = "pretrain"  # a `pretrain=mlm` job's pretraining stage: RUN_DIR/pretrain/


def run_dir(runs: str, stamp: str, resume: bool, ckpt_path: str | None) -> str:
    """`hydra.run.dir`: `RUNS/<time>`; with `resume=true` (or `ckpt_path=last`), the newest run
    under RUNS (this run name's folder) that has a last.ckpt, so a resumed run continues in its
    own directory: its checkpoints (the best one too), CSV history, W&B id and results."""
    if resume is True or ckpt_path == "last":
        # a run's own last.ckpt, or its pretraining stage's (`pretrain=mlm`, stopped in it)
        earlier = [*Path(runs).glob(f"*/{LAST}"), *Path(runs).glob(f"*/{STAGE}/{LAST}")]
        if earlier:
            newest = max(earlier, key=lambda p: p.stat().st_mtime)
            return str(newest.parents[2] if newest.parents[1].name == STAGE else newest.parents[1])
    return f"{runs}/{stamp}"


_subdirs: dict[str, str] = {}  # run directory -> its job's subdir, for the job's lifetime


def hydra_subdir(run_dir: str) -> str:
    """`hydra.output_subdir`: where Hydra writes a job's config.yaml, hydra.yaml, overrides.yaml.
    `.hydra` in a new run directory; in one that already holds a job's (a resumed or requeued
    run), `.hydra/<time>`, so the command that made the run is never replaced. Stable within a
    job (Hydra may resolve it more than once); `end_job` forgets it."""
    if run_dir not in _subdirs:
        subdir, base = HYDRA_SUBDIR, Path(run_dir) / HYDRA_SUBDIR
        if (base / "config.yaml").exists():
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
            subdir = next(
                f"{HYDRA_SUBDIR}/{name}"
                for name in (stamp, *(f"{stamp}-{k}" for k in range(1, 1000)))
                if not (base / name).exists()
            )
        _subdirs[run_dir] = subdir
    return _subdirs[run_dir]


def end_job(run_dir: str) -> None:
    _subdirs.pop(run_dir, None)


# module-level functions, not lambdas: pickled by reference into a launcher's jobs
def vocab_size(family: str) -> int:
    return TASKS.get(family).vocab_size


def num_classes(family: str) -> int:
    return TASKS.get(family).num_classes


def cpus_per_task(num_workers: int) -> int:
    """A SLURM task's CPUs: the training process and its data-loader workers (asking for more
    than a node has leaves the job pending for ever)."""
    return int(num_workers) + 1


GPU_ACCELERATORS = ("gpu", "cuda", "auto")  # auto: a SLURM job asks for GPUs; trainer=cpu not


def gpus_per_node(accelerator: str, devices: int) -> int | None:
    """A SLURM job's GPUs per node: one per device, or none for a CPU trainer (`trainer=cpu`)."""
    return int(devices) if str(accelerator) in GPU_ACCELERATORS else None


def mem_gb(accelerator: str, devices: int) -> int:
    """A SLURM job's memory per node: 16 GB per GPU, 4 GB for a CPU job (one process). Small
    enough for a small node; `hydra.launcher.mem_gb=N` sets it."""
    return 16 * int(devices) if str(accelerator) in GPU_ACCELERATORS else 4


def pretrain_tag(objective: str, pretrained: str | None = None) -> str:
    """The run name's mark of a self-pretrained run: `-mlm` (`pretrain=mlm`), `-pretrained`
    (`pretrained=PATH`: its own runs, never resumed as one from scratch); nothing from scratch."""
    if str(objective) != "none":
        return f"-{objective}"
    return "-pretrained" if pretrained else ""


def in_multirun() -> bool:
    """Is this process running one job of a Hydra multirun (`-m`)?"""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def register_resolvers() -> None:
    """`${lra.vocab_size:listops}`, `${lra.num_classes:listops}`, read from the DataModule;
    `${lra.run_dir:...}` and `${lra.hydra_subdir:RUN_DIR}` (see `run_dir`, `hydra_subdir`)."""
    resolvers = {
        "lra.vocab_size": vocab_size,
        "lra.num_classes": num_classes,
        "lra.hydra_subdir": hydra_subdir,
        "lra.run_dir": run_dir,
        "lra.cpus_per_task": cpus_per_task,
        "lra.gpus_per_node": gpus_per_node,
        "lra.mem_gb": mem_gb,
        "lra.pretrain_tag": pretrain_tag,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
