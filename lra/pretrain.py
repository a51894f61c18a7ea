"""`python -m lra.pretrain task=... model=... [pretrain=mlm] [key=value ...]`: self-pretraining.

The task's encoder, at the same matched parameter count as fine-tuning builds it, trained on the
task's training inputs alone (no labels, never the validation or test inputs) with the objective
of `conf/pretrain/<name>.yaml` (default mlm; what it follows: lra/pretraining.py). The run is
named `pretrain-<task>-<model>-<objective>-s<seed>` and lives, as any run, under
`outputs/runs/<name>/<time>/`, with checkpoints, `resume=true`, SLURM requeue and its W&B run
(`job_type: pretrain`). It writes `encoder.pt` there; fine-tune from it with

    python -m lra.train task=... model=... pretrained=<that folder>

or run both stages as one job: `python -m lra.train ... pretrain=mlm`.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lra.cluster import one_ddp_job, worker_argv
from lra.config import CONF_DIR, end_job, in_multirun
from lra.job import run_job
from lra.pretraining import fit_pretrain

RUN_NAME = "run_name=pretrain-${task.name}-${model.name}-${pretrain.objective}-s${seed}"


def pretrain(cfg: DictConfig) -> dict[str, Any]:
    """One pretraining run in process (the results.json it writes, `status: finished`)."""
    return run_job(cfg, fit_pretrain)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        with one_ddp_job() if in_multirun() else nullcontext():
            pretrain(cfg)
    finally:
        if HydraConfig.initialized():
            end_job(HydraConfig.get().runtime.output_dir)


def with_defaults(argv: list[str]) -> list[str]:
    """The command line with this command's defaults where it gives none: `pretrain=mlm`, and the
    run name that keeps a pretraining run apart from the fine-tuning runs."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv[1:] if "=" in a}
    extra = [*([] if "pretrain" in given else ["pretrain=mlm"]),
             *([] if "run_name" in given else [RUN_NAME])]  # fmt: skip
    return [*argv, *extra]


if __name__ == "__main__":
    sys.argv = with_defaults(worker_argv(sys.argv))
    main()
