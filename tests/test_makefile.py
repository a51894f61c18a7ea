"""`make install`: TORCH_SPEC reaches pip word by word, and a new spec reinstalls torch."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from conftest import ROOT

CUDA = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


def planned(venv: Path, spec: str) -> list[list[str]]:
    """The commands `make install` would run (`make -n`), each split as the shell splits it."""
    args = ["make", "-n", "-C", str(ROOT), "install", f"VENV={venv}", f"TORCH_SPEC={spec}"]
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def torch_installs(commands: list[list[str]]) -> list[list[str]]:
    return [c for c in commands if c[1:4] == ["-m", "pip", "install"] and "-e" not in c
            and not any(a.startswith("--upgrade") for a in c)]  # fmt: skip


def test_a_torch_spec_reaches_pip_as_separate_arguments_and_a_new_one_reinstalls(
    tmp_path: Path,
) -> None:
    venv = tmp_path / ".venv"
    (install,) = torch_installs(planned(venv, CUDA))
    assert install[-3:] == [
        "torch==2.13.0",
        "--index-url",
        "https://download.pytorch.org/whl/cu128",
    ]

    # a .venv installed with the CPU spec: the same spec plans nothing, a CUDA spec reinstalls
    stamp = next(c for c in planned(venv, "torch==2.13.0") if c[0] == "printf")[-1]
    venv.mkdir()
    Path(stamp).write_text("torch==2.13.0\n")
    (venv / ".installed").touch()
    later = (ROOT / "pyproject.toml").stat().st_mtime + 10
    os.utime(venv / ".installed", (later, later))
    assert torch_installs(planned(venv, "torch==2.13.0")) == []
    commands = planned(venv, CUDA)
    assert [c[1:5] for c in commands if c[1:4] == ["-m", "pip", "uninstall"]] == [
        ["-m", "pip", "uninstall", "-q"]
    ]
    (install,) = torch_installs(commands)
    assert install[-2:] == ["--index-url", "https://download.pytorch.org/whl/cu128"]
