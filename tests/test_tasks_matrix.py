"""Every task x every backbone through the real CLI, and each LRA task's protocol.

One Hydra multirun process trains all pairs (`fast_dev_run`, tiny width) on a few rows of each
task written in the official layout; tasks and backbones are discovered from conf/task/*.yaml and
conf/model/*.yaml, so a task or backbone added later joins the matrix by itself. README's "Add a
task" example is trained from a temporary folder.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from conftest import ROOT, Runs
from lra_files import write_all_tasks

import lra.data
from lra.build import compose, configs, sample_tasks
from lra.registry import TASKS as TASK_REGISTRY

# the CPU verdict's tasks generate their data at full size (minutes): tests/test_verdict.py
TASKS = sample_tasks()
MODELS = configs("model")
LRA_TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
TINY = [
    "trainer=cpu",
    "trainer.fast_dev_run=true",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "task.data.num_workers=0",
    "task.optim.batch_size=2",
    "task.max_len=64",  # the readers keep the first 64 tokens (pixels, bytes) of each sequence
    "task.encoder.num_layers=1",
    "task.encoder.num_heads=2",
    "task.encoder.d_model=16",
    "task.encoder.qkv_dim=16",
    "task.encoder.mlp_dim=32",
    "params.match=false",  # tiny widths are below what some mixers can match; see test_params
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[tuple[str, str], dict]]:
    root = tmp_path_factory.mktemp("matrix")
    write_all_tasks(root / "data")
    args = [sys.executable, "-m", "lra.train", "--multirun", f"task={','.join(TASKS)}",
            f"model={','.join(MODELS)}", *TINY, f"paths.data_dir={root / 'data'}",
            f"paths.log_dir={root / 'outputs'}", f"hydra.sweep.dir={root / 'sweep'}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    results = {}
    for path in (root / "sweep").glob("*/results.json"):
        r = json.loads(path.read_text())
        results[(r["task"], r["model"])] = r
    return proc, results


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", TASKS)
def test_fast_dev_run_of_task_with_backbone(sweep, task: str, model: str) -> None:
    proc, results = sweep
    assert (task, model) in results, (
        f"no results.json for task={task} model={model}; the sweep exited {proc.returncode}:\n"
        f"{proc.stderr[-4000:]}"
    )
    r = results[(task, model)]
    assert r["steps"] == 1 and 0.0 <= r["test_acc"] <= 1.0
    assert r["params"]["total"] > r["params"]["mixer"] > 0
    assert r["config"]["model"]["name"] == model and r["config"]["task"]["name"] == task


def task_config(task: str) -> Any:
    return compose([f"task={task}"]).task


# LRA's released Transformer configs (the harness's protocol table).
PROTOCOL = {
    # task: layers, heads, d_model, qkv, mlp, dropout, attn dropout, max_len, pooling, positions
    "listops": (4, 8, 512, 512, 1024, 0.1, 0.1, 2000, "cls", "sinusoidal"),
    "text": (4, 4, 256, 256, 1024, 0.1, 0.1, 4000, "cls", "sinusoidal"),
    "retrieval": (4, 4, 128, 128, 512, 0.1, 0.1, 4000, "first", "sinusoidal"),  # no CLS, as LRA
    "image": (1, 8, 128, 64, 128, 0.3, 0.2, 1024, "cls", "learned"),
    "pathfinder": (4, 4, 32, 16, 32, 0.2, 0.1, 1024, "mean", "sinusoidal"),
    "pathx": (1, 2, 32, 16, 32, 0.1, 0.1, 16384, "mean", "learned"),
}
OPTIM = {
    # task: batch, lr, schedule, warm-up, steps, weight decay, clip
    "listops": (32, 0.05, "rsqrt", 1000, 5000, 0.1, None),
    "text": (32, 0.05, "rsqrt", 8000, 20000, 0.1, None),
    "retrieval": (32, 0.05, "rsqrt", 8000, 5000, 0.1, None),
    "image": (256, 5e-4, "cosine", 175, 35000, 0.0, None),
    "pathfinder": (512, 1e-3, "cosine", 312, 62400, 0.0, None),
    "pathx": (64, 1e-3, "cosine", 2500, 500000, 0.0, 1.0),
}
CLASSES = {"listops": 10, "text": 2, "retrieval": 2, "image": 10, "pathfinder": 2, "pathx": 2}


@pytest.mark.parametrize("task", LRA_TASKS)
def test_task_config_is_lra_protocol(task: str) -> None:
    t = task_config(task)
    e, o = t.encoder, t.optim
    shape = (e.num_layers, e.num_heads, e.d_model, e.qkv_dim, e.mlp_dim, e.dropout,
             e.attn_dropout, t.max_len, e.pooling, e.pos_emb)  # fmt: skip
    assert shape == PROTOCOL[task]
    optim = (o.batch_size, o.lr, o.schedule, o.warmup_steps, o.max_steps, o.weight_decay,
             o.grad_clip)  # fmt: skip
    assert optim == OPTIM[task]
    assert t.num_classes == CLASSES[task] and e.max_len == t.max_len
    assert t.head == ("dual" if task == "retrieval" else "single")
    if task != "listops":
        assert t.vocab_size == 257, "bytes or pixels + 1: 0 is padding only"


def test_every_task_is_in_the_matrix() -> None:
    assert set(LRA_TASKS) | {"listops_small"} <= set(TASKS)


def test_the_readme_task_trains(runs: Runs, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = (ROOT / "README.md").read_text().split("## Add a task", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "parity.py").write_text(python)
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "parity.yaml").write_text(yaml)
    TASK_REGISTRY.names()  # loaded now, so the copy below holds every task and teardown restores it
    monkeypatch.setattr(lra.data, "__path__", [*lra.data.__path__, str(tmp_path / "tasks")])
    monkeypatch.setattr(TASK_REGISTRY, "_entries", dict(TASK_REGISTRY._entries))
    try:
        importlib.import_module("lra.data.parity")  # as the registry does with every file there
        r = runs.train(f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "task=parity",
                       "model=igloo", "trainer=cpu", "trainer.fast_dev_run=true",
                       "trainer.enable_progress_bar=false", "logger=none", tiny=False)  # fmt: skip
    finally:
        sys.modules.pop("lra.data.parity", None)
        vars(lra.data).pop("parity", None)
    assert r["task"] == "parity" and r["steps"] == 1 and 0.0 <= r["test_acc"] <= 1.0
    assert r["config"]["task"]["vocab_size"] == 3 and r["params"]["match"] is True
    assert abs(r["params"]["deviation"]) <= 0.01
    rows = (runs.data_dir / "parity" / "train.txt").read_text().split()
    assert len(rows) == 2048 and {len(row) for row in rows} == {64}
