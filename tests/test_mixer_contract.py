"""The mixer contract (lra/models/attention/__init__.py), checked for every registered mixer.

The parameters come from `MIXERS.names()` at collection, so a new file in lra/models/attention/ is
tested by itself; `test_a_new_mixer_file_is_picked_up_and_tested` proves it with the README's
example mixer and a broken one, added from a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

from lra.build import CONF_DIR, build_net, compose, configs, count, with_model
from lra.matching import match_parameters
from lra.models.classifier import count_parameters
from lra.registry import MIXERS

B, N, D = 3, 24, 16
LENGTHS = [24, 13, 6]  # real tokens per row; the rest is padding


EXTRA_MODELS = "LRA_CONTRACT_MODEL_DIR"  # a folder of more model configs (the test below sets it)


def model_config(mixer: str) -> dict:
    """The mixer's model config (the first `conf/model/*.yaml` that names it, then those in
    $LRA_CONTRACT_MODEL_DIR), else the plain default one."""
    folders = [CONF_DIR / "model"]
    if EXTRA_MODELS in os.environ:
        folders.append(Path(os.environ[EXTRA_MODELS]))
    for path in (p for folder in folders for p in sorted(folder.glob("*.yaml"))):
        node = OmegaConf.load(path)
        if node.get("mixer", {}).get("name") == mixer:
            return OmegaConf.to_container(node)
    return {"name": mixer, "mixer": {"name": mixer}}


def tiny(mixer: str, *overrides: str):
    """A run config with the mixer's model at a tiny width (D = 16, n = 24)."""
    cfg = compose(["task=listops_small", "task.max_len=24", "task.encoder.num_layers=1",
                   "task.encoder.num_heads=2", f"task.encoder.d_model={D}",
                   f"task.encoder.qkv_dim={D}", "task.encoder.mlp_dim=32",
                   "task.encoder.pooling=mean", *overrides])  # fmt: skip
    return with_model(cfg, model_config(mixer))


def build(mixer: str, seed: int = 0):
    """The mixer and its shared module, as the encoder builds them for a 1-layer network."""
    torch.manual_seed(seed)
    encoder = build_net(tiny(mixer)).encoder.eval()
    return encoder.blocks[0].mixer, encoder.shared


def apply(mixer, shared, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return mixer(x, mask, **(shared() if shared is not None else {}))


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    mask = torch.arange(N)[None, :] < torch.tensor(LENGTHS)[:, None]  # [B, n]
    return x, mask


MIXER_NAMES = MIXERS.names()


def test_every_registered_mixer_is_covered() -> None:
    assert {"baseline", "igloo", "disentangled"} <= set(MIXER_NAMES)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_output_has_the_input_shape_and_dtype(name: str) -> None:
    mixer, shared = build(name)
    x, mask = inputs()
    y = apply(mixer, shared, x, mask)
    assert y.shape == (B, N, D) and y.dtype == x.dtype
    assert torch.isfinite(y[mask]).all()
    short = apply(mixer, shared, x[:, :10], mask[:, :10])  # n < max_len: a shorter batch
    assert short.shape == (B, 10, D)
    for module in (mixer, shared):
        if module is not None:
            module.double()
    assert apply(mixer, shared, x.double(), mask).dtype == torch.float64, "the input's dtype"


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_no_mask_is_an_all_true_mask(name: str) -> None:
    mixer, shared = build(name)
    x, _ = inputs()
    with torch.no_grad():
        y = apply(mixer, shared, x, None)
        torch.testing.assert_close(y, apply(mixer, shared, x, torch.ones(B, N, dtype=torch.bool)))


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_padded_positions_are_never_read(name: str) -> None:
    mixer, shared = build(name)
    x, mask = inputs()
    with torch.no_grad():
        y = apply(mixer, shared, x, mask)
        noise = torch.randn(B, N, D, generator=torch.Generator().manual_seed(7)) * 100
        perturbed = apply(mixer, shared, torch.where(mask[..., None], x, noise), mask)
    torch.testing.assert_close(perturbed[mask], y[mask], msg=f"{name} reads padded positions")


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_lra_padding_changes_only_the_outputs_at_padded_positions(name: str) -> None:
    """`task.encoder.padding=lra` (mask_queries): real positions' outputs are the same; a mixer
    without the keyword is refused by name (an optional part of the contract)."""
    mixer, shared = build(name)
    torch.manual_seed(0)
    try:
        encoder = build_net(tiny(name, "task.encoder.padding=lra")).encoder.eval()
    except ValueError as e:
        assert f"mixer '{name}' takes no mask_queries" in str(e)
        return
    masked = encoder.blocks[0].mixer
    masked.load_state_dict(mixer.state_dict())
    x, mask = inputs()
    with torch.no_grad():
        y, y_lra = apply(mixer, shared, x, mask), apply(masked, shared, x, mask)
    torch.testing.assert_close(y_lra[mask], y[mask], msg=f"{name}: real outputs moved")


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    mixer, shared = build(name)
    x, mask = inputs()
    weights = torch.randn(B, N, D, generator=torch.Generator().manual_seed(3))
    (apply(mixer, shared, x, mask) * weights)[mask].sum().backward()
    modules = [mixer] + ([shared] if shared is not None else [])
    named = [(n, p) for m in modules for n, p in m.named_parameters()]
    assert named, f"{name} has no parameters"
    for pname, p in named:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_the_same_seed_gives_the_same_mixer_and_output(name: str) -> None:
    (m1, s1), (m2, s2) = build(name, seed=5), build(name, seed=5)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{name}: {k} differs between two builds with one seed"
    x, mask = inputs()
    with torch.no_grad():
        torch.testing.assert_close(apply(m1, s1, x, mask), apply(m2, s2, x, mask), rtol=0, atol=0)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_builds_on_meta_without_drawing_random_numbers_and_counts_as_a_real_build(name) -> None:
    cfg = tiny(name)
    state = torch.get_rng_state()
    with torch.device("meta"):
        net = build_net(cfg)
    assert torch.equal(torch.get_rng_state(), state), f"{name} draws random numbers on meta"
    assert all(p.is_meta for p in net.parameters())
    assert count_parameters(net) == count_parameters(build_net(cfg)) == count(cfg)


@pytest.mark.parametrize("name", MIXER_NAMES)
def test_matched_within_tolerance_on_every_task(name: str) -> None:
    for task in configs("task"):
        cfg = with_model(compose([f"task={task}"]), model_config(name))
        facts = match_parameters(cfg).params  # raises ParameterBudgetError outside tolerance
        assert abs(facts.deviation) <= cfg.params.tolerance, (name, task)


def readme_example() -> tuple[str, str]:
    """The mixer of README's "Add a backbone" (its python block) and its model config (yaml)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Add a backbone", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    return python, yaml


LEAKY = '''
import torch
from torch import nn

from lra.registry import MIXERS


@MIXERS.register("leaky_mean")
class LeakyMean(nn.Module):
    """Broken on purpose: it averages over every position, padding included."""

    def __init__(self, d_model, num_heads, qkv_dim, attn_dropout=0.0, max_len=None):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask):
        return self.proj(x.mean(1, keepdim=True).expand_as(x))
'''


@pytest.mark.slow
def test_a_new_mixer_file_is_picked_up_and_tested(tmp_path: Path) -> None:
    python, yaml = readme_example()
    assert "@MIXERS.register" in python and "name:" in yaml
    name = re.search(r'@MIXERS.register\("(\w+)"\)', python).group(1)
    extra, models = tmp_path / "mixers", tmp_path / "models"
    extra.mkdir()
    models.mkdir()
    (extra / f"{name}.py").write_text(python)
    (models / f"{name}.yaml").write_text(yaml)
    (extra / "leaky_mean.py").write_text(LEAKY)
    # The registry imports every module on the package's path: put the folder on it, then run
    # this file's tests for the two new mixers only.
    driver = (
        "import sys, pytest, lra.models.attention as pkg; "
        f"pkg.__path__.append({str(extra)!r}); "
        "sys.exit(pytest.main(sys.argv[1:]))"
    )
    args = [sys.executable, "-c", driver, __file__, "-q", "-p", "no:cacheprovider",
            "-k", f"{name} or (leaky_mean and padded)", "-rA", "-W", "ignore"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT / "tests", capture_output=True, text=True, timeout=300,
                          env={**os.environ, EXTRA_MODELS: str(models)})  # fmt: skip
    out = proc.stdout
    passed = re.findall(rf"PASSED test_mixer_contract.py::(test_\w+)\[{name}\]", out)
    contract = [
        n
        for n, f in globals().items()
        if n.startswith("test_")
        and any(m.name == "parametrize" for m in getattr(f, "pytestmark", []))
    ]
    assert sorted(passed) == sorted(contract), out
    assert "FAILED test_mixer_contract.py::test_padded_positions_are_never_read[leaky_mean]" in out
    assert "leaky_mean reads padded positions" in out
    assert proc.returncode == 1, "the broken mixer fails its contract test"
