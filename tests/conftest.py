"""Shared helpers: train on tiny generated ListOps in process (`Runs`: compose + `train(cfg)`, as
the command line would), or through the real CLI (`CLI`: a subprocess), in a temporary folder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from omegaconf import DictConfig

from lra.build import compose

ROOT = Path(__file__).resolve().parents[1]

# listops_small made tiny: a few hundred examples, a 2-layer width-32 encoder, a few steps.
TINY = [
    "task=listops_small",
    "task.data.generator.num_train=256",
    "task.data.generator.num_val=64",
    "task.data.generator.num_test=64",
    "task.data.num_workers=0",
    "task.encoder.d_model=32",
    "task.encoder.qkv_dim=32",
    "task.encoder.mlp_dim=64",
    "task.optim.batch_size=16",
    "trainer=cpu",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "params.match=false",  # tiny widths are below what some mixers can match; see test_params
]


class Runs:
    """In-process runs: `compose` the overrides a user would type, then `lra.train.train(cfg)`."""

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.data_dir = data_dir

    def config(self, *overrides: str, run_dir: str = "run", tiny: bool = True) -> DictConfig:
        return compose(
            [
                *(TINY if tiny else []),
                f"paths.data_dir={self.data_dir}",
                f"paths.log_dir={self.root / 'outputs'}",
                f"paths.output_dir={self.root / run_dir}",
                *overrides,
            ]
        )

    def train(self, *overrides: str, run_dir: str = "run", tiny: bool = True) -> dict[str, Any]:
        from lra.train import train

        return train(self.config(*overrides, run_dir=run_dir, tiny=tiny))

    def results(self, run_dir: str = "run") -> dict[str, Any]:
        return json.loads((self.root / run_dir / "results.json").read_text())

    def command_line(self, *args: str) -> None:
        """`python -m lra.train [args]` parsed and run by Hydra's own main in this process
        (sweeps and sweepers included), with the tiny overrides and this folder's paths."""
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.hydra_config import HydraConfig

        import lra.train

        argv = [*TINY, f"paths.data_dir={self.data_dir}", f"paths.log_dir={self.root / 'outputs'}"]
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        saved = sys.argv
        flags = [a for a in args if a.startswith("-")]  # Hydra's flags come first
        sys.argv = ["lra.train", *flags, *argv, *(a for a in args if a not in flags)]
        try:
            lra.train.main()
        finally:  # Hydra's global state and its logging set-up end with the command
            sys.argv = saved
            HydraConfig.instance().cfg = None
            GlobalHydra.instance().clear()
            for handler in root.handlers:
                if handler not in handlers:  # Hydra's job log files
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for every in-process run: tiny listops_small is generated (and tokenised)
    once per session, under the settings in TINY."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def runs(tmp_path: Path, tiny_data: Path) -> Iterator[Runs]:
    # the environment as it was after the test: Lightning's seed_everything sets PL_GLOBAL_SEED
    with mock.patch.dict(os.environ, {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}):
        yield Runs(tmp_path, tiny_data)


class CLI:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"

    def run(
        self,
        *overrides: str,
        run_dir: str = "run",
        tiny: bool = True,
        module: str = "lra.train",
        flags: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        **popen: Any,
    ) -> subprocess.CompletedProcess:
        """`python -m module [flags] [tiny overrides, paths] overrides` in the repository root;
        `popen`: more of subprocess.run's arguments (e.g. preexec_fn)."""
        args = [sys.executable, "-m", module, *flags]
        if module == "lra.train":
            args += [*(TINY if tiny else []), f"paths.data_dir={self.data_dir}"]
            args += [
                f"paths.log_dir={self.root / 'outputs'}",
                f"hydra.run.dir={self.root / run_dir}",
            ]
        args += list(overrides)
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONHASHSEED": "0",
               **(env or {})}  # fmt: skip
        return subprocess.run(
            args, cwd=ROOT, env=env, capture_output=True, text=True, **{"timeout": 600, **popen}
        )

    def results(self, run_dir: str = "run") -> dict[str, Any]:
        return json.loads((self.root / run_dir / "results.json").read_text())


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc
