"""Printing: the resolved config as a Rich tree (terminal decoration), the run's summary as plain
lines (read by people and by scripts, in terminals and in log files)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich import print as rprint
from rich.syntax import Syntax
from rich.tree import Tree

ORDER = ("task", "model", "trainer", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in ORDER if k in cfg] + [k for k in cfg if k not in ORDER]
    for key in keys:
        branch = tree.add(f"[bold]{key}")
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    rprint(tree)


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The run's summary: one record per line, for logs as much as for people."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f}%"

    results_line = f"results: {results['run_dir']}/results.json"
    if results.get("status", "finished") != "finished":
        return [
            f"{results['run_name']}: {results['status']} after {results['steps']} steps: "
            f"{results['reason']}",
            results_line,
        ]
    if results.get("job_type") == "pretrain":
        p, n, loss = results["pretrain"], results["params"], results["train_loss"]
        return [
            f"{results['run_name']}: pretrained ({p['objective']}, mask rate {p['mask_rate']:g}) "
            f"for {results['steps']} steps in {results['fit_seconds']:.0f} s: final masked-token "
            f"loss {'n/a' if loss is None else f'{loss:.4f}'}, "
            f"accuracy {pct(results['train_masked_acc'])}; encoder {n['encoder']:,} parameters "
            f"(+{n['pretrain_head']:,} for pretraining alone)",
            f"encoder: {results['encoder_file']} (fine-tune: pretrained=<this folder>)",
            results_line,
        ]
    tested = {"last": " (final weights)", "best": " (best val/acc checkpoint)"}
    return [
        f"{results['run_name']}: test accuracy {pct(results['test_acc'])}"
        f"{tested.get(results.get('tested'), '')}, "
        f"majority-class rate of the test split {pct(results['test_majority_rate'])}, "
        f"best val accuracy {pct(results['val_acc_best'])}, "
        f"{results['steps']} steps in {results['fit_seconds']:.0f} s "
        f"({results['train_tokens_per_s']:.0f} train tokens/s), "
        f"{results['params']['total']:,} parameters ({results['params']['mixer']:,} in mixers)",
        *(
            [
                f"{results['run_name']}: validation is this task's test split: the best val "
                "accuracy (and a checkpoint chosen by it: test_checkpoint=best) is a test number"
            ]
            if results.get("val_is_test")
            else []
        ),
        results_line,
    ]


def print_summary(results: dict[str, Any]) -> None:
    """Plain lines, never wrapped at a console width: a log file keeps each one whole."""
    for line in summary_lines(results):
        print(line, flush=True)
