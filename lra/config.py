"""Where the config tree is, and the OmegaConf resolvers, so derived values are computed from code,
never typed twice."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from lra.registry import TASKS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def register_resolvers() -> None:
    """`${lra.vocab_size:listops}`, `${lra.num_classes:listops}`, read from the DataModule."""
    resolvers = {
        "lra.vocab_size": lambda family: TASKS.get(family).vocab_size,
        "lra.num_classes": lambda family: TASKS.get(family).num_classes,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
