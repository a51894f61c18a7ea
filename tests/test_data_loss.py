"""What a user has on disk survives every command, each case through the real command line with a
user's file planted beside the data: the generator, the data readers, a full disk, resuming.
(A kill inside a validation, then `resume=true`: tests/test_scale.py.)

A case's commands (`commands_NAME`) are mostly Python's start-up and imports, one core each: the
commands of the selected cases run two at a time at the module's start; `test_NAME` checks them.
"""

from __future__ import annotations

import resource
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, TINY, ok
from lra_files import write_listops

pytestmark = pytest.mark.slow

# ListOps, the task (not listops_small), made tiny: 30 short trees, a 1-layer width-16 encoder
SMALL = [
    "task.data.generator.num_train=20",
    "task.data.generator.num_val=5",
    "task.data.generator.num_test=5",
    "task.data.generator.max_depth=3",
    "task.data.generator.min_length=5",
    "task.data.generator.max_length=60",
]
LISTOPS = [
    "task=listops",
    *SMALL,
    *(o for o in TINY if not o.startswith(("task=", "task.data.generator."))),
    "task.max_len=64",
    "task.encoder.num_layers=1",
    "task.encoder.num_heads=2",
    "logger=none",
]
TREES = [("( ( [MAX 2 ) 9 ] )", 9), ("( ( [MIN 4 ) 1 ] )", 1)] * 4
USER_FILE = "notes.txt"
Snapshot = dict[str, tuple[int, bytes]]


def snapshot(folder: Path) -> Snapshot:
    """Every file under `folder`: its modification time and its bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def plant(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / USER_FILE).write_text("a researcher's notes, not the harness's")
    return folder


CASES: dict[str, Callable[[CLI], dict[str, Any]]] = {}


def commands(fn: Callable[[CLI], dict[str, Any]]) -> Callable[[CLI], dict[str, Any]]:
    """Register `commands_NAME(cli)`: it plants files, runs commands, returns what test_NAME
    checks."""
    CASES[fn.__name__.removeprefix("commands_")] = fn
    return fn


@pytest.fixture(scope="module")
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], dict[str, Any]]]:
    here = {item.name for item in request.session.items if item.module is request.module}
    with ThreadPoolExecutor(2) as pool:
        started: dict[str, Future] = {
            name: pool.submit(fn, CLI(tmp_path_factory.mktemp(name)))
            for name, fn in CASES.items()
            if f"test_{name}" in here
        }
        yield lambda name: started[name].result()


@commands
def commands_prepare_into_a_users_folder_refuses_and_with_force_removes_nothing(cli: CLI) -> dict:
    out = plant(cli.root / "mine")
    before = snapshot(out)
    prepare = ("listops_small", "--out", str(out), *SMALL)
    refused = cli.run(*prepare, module="lra.data.prepare")
    after_refusal = snapshot(out)
    forced = cli.run(*prepare, flags=("--force",), module="lra.data.prepare")
    return dict(out=out, before=before, refused=refused, after_refusal=after_refusal,
                forced=forced, after=snapshot(out), root=sorted(cli.root.iterdir()))  # fmt: skip


def test_prepare_into_a_users_folder_refuses_and_with_force_removes_nothing(case) -> None:
    c = case("prepare_into_a_users_folder_refuses_and_with_force_removes_nothing")
    assert c["refused"].returncode == 2, c["refused"].stderr[-2000:]
    assert f"{c['out']} holds files this generator did not write ({USER_FILE})" in (
        c["refused"].stderr
    )
    assert "--force" in c["refused"].stderr
    assert c["after_refusal"] == c["before"], "refused: nothing written, nothing removed"
    ok(c["forced"])
    assert c["after"][USER_FILE] == c["before"][USER_FILE], "the user's file, untouched"
    assert set(c["after"]) == {USER_FILE, "MANIFEST.json", "basic_train.tsv", "basic_val.tsv",
                               "basic_test.tsv"}  # fmt: skip
    assert c["root"] == [c["out"]], "no temporary folder left behind"


@commands
def commands_prepare_listops_generates_apart_from_the_release_and_leaves_it_whole(
    cli: CLI,
) -> dict:
    release = plant(cli.data_dir / "lra_release" / "listops-1000")
    write_listops(release, TREES)
    before = snapshot(cli.data_dir / "lra_release")
    proc = cli.run("listops", f"paths.data_dir={cli.data_dir}", *SMALL, module="lra.data.prepare")
    generated = sorted(p.name for p in cli.data_dir.glob("generated/listops-1000/*"))
    return dict(before=before, proc=proc, after=snapshot(cli.data_dir / "lra_release"),
                generated=generated)  # fmt: skip


def test_prepare_listops_generates_apart_from_the_release_and_leaves_it_whole(case) -> None:
    c = case("prepare_listops_generates_apart_from_the_release_and_leaves_it_whole")
    ok(c["proc"])
    assert c["after"] == c["before"], "the release, byte for byte"
    assert c["generated"] == ["MANIFEST.json", "basic_test.tsv", "basic_train.tsv",
                              "basic_val.tsv"]  # fmt: skip
    assert '"num_train": 20' in c["proc"].stdout, "the manifest is printed"


@commands
def commands_a_partial_release_is_an_error_naming_the_missing_file_and_nothing_is_generated(
    cli: CLI,
) -> dict:
    release = plant(cli.data_dir / "lra_release" / "listops-1000")
    write_listops(release, TREES)
    (release / "basic_test.tsv").unlink()
    before = snapshot(cli.data_dir)
    proc = cli.run(*LISTOPS, tiny=False)  # task.data.generate is true
    return dict(release=release, before=before, proc=proc, after=snapshot(cli.data_dir),
                results=cli.results())  # fmt: skip


def test_a_partial_release_is_an_error_naming_the_missing_file_and_nothing_is_generated(
    case,
) -> None:
    c = case("a_partial_release_is_an_error_naming_the_missing_file_and_nothing_is_generated")
    release, proc, r = c["release"], c["proc"], c["results"]
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = f"{release}/basic_test.tsv not found, but {release} holds other ListOps files"
    assert message in proc.stderr and "a partial release" in proc.stderr
    assert r["status"] == "failed" and message in r["reason"] and r["test_acc"] is None
    assert {k: v for k, v in c["after"].items() if not k.startswith("cache/")} == c["before"], (
        "the release and the user's file as they were; nothing generated over or beside them"
    )


@commands
def commands_a_release_in_the_wrong_folder_is_named_with_every_place_looked_in(cli: CLI) -> dict:
    stray = plant(cli.data_dir / "listops-1000")
    write_listops(stray, TREES)
    before = snapshot(stray)
    proc = cli.run(*LISTOPS, "task.data.generate=false", tiny=False)
    return dict(data=cli.data_dir, stray=stray, before=before, proc=proc, after=snapshot(stray),
                results=cli.results())  # fmt: skip


def test_a_release_in_the_wrong_folder_is_named_with_every_place_looked_in(case) -> None:
    c = case("a_release_in_the_wrong_folder_is_named_with_every_place_looked_in")
    proc, stray, r = c["proc"], c["stray"], c["results"]
    assert proc.returncode == 1, proc.stderr[-2000:]
    release, generated = c["data"] / "lra_release" / "listops-1000", c["data"] / "generated"
    assert f"{release}/basic_train.tsv not found" in proc.stderr
    assert f"looked in {release}/ and {generated}/listops-1000/" in proc.stderr
    assert f"found {stray}/, which is not where the release is read from" in proc.stderr
    assert f"task.data.dir={stray}" in proc.stderr
    assert "python -m lra.data.prepare listops" in proc.stderr
    assert r["status"] == "failed" and f"{release}/basic_train.tsv not found" in r["reason"]
    assert c["after"] == c["before"]


@commands
def commands_a_full_disk_while_checkpointing_leaves_no_half_checkpoint(cli: CLI) -> dict:
    """The file-size limit (`ulimit -f`) set below a checkpoint's size: its write fails as on a
    full disk (EFBIG, as ENOSPC), after the data and the logs are written."""
    limit = 100_000  # bytes; a checkpoint of this model is ~290 kB, the data files ~35 kB

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = cli.run("logger=csv", preexec_fn=small_files)
    checkpoints = cli.root / "run" / "checkpoints"
    return dict(proc=proc, checkpoints=sorted(checkpoints.iterdir()), results=cli.results())


def test_a_full_disk_while_checkpointing_leaves_no_half_checkpoint(case) -> None:
    c = case("a_full_disk_while_checkpointing_leaves_no_half_checkpoint")
    assert c["proc"].returncode == 1, c["proc"].stderr[-2000:]
    assert c["checkpoints"] == [], "no checkpoint, whole or half, and no temporary file"
    assert c["results"]["status"] == "failed" and "File too large" in c["results"]["reason"]


@commands
def commands_resume_on_a_finished_run_reports_it_and_keeps_every_file(cli: CLI) -> dict:
    first = cli.run("logger=csv")
    run = cli.root / "run"
    before = snapshot(run)
    again = cli.run("logger=csv", "resume=true")
    return dict(run=run, first=first, before=before, again=again, after=snapshot(run))


def test_resume_on_a_finished_run_reports_it_and_keeps_every_file(case) -> None:
    c = case("resume_on_a_finished_run_reports_it_and_keeps_every_file")
    run, before, after = c["run"], c["before"], dict(c["after"])
    ok(c["first"])
    out = ok(c["again"]).stdout
    assert f"listops_small-baseline-s0: already finished in {run}; nothing resumed" in out
    assert f"results: {run}/results.json" in out, "its results are shown"
    new = sorted(set(after) - set(before))
    assert new and all(k.startswith(".hydra/") for k in new), "this command's own config, beside"
    log = "train.log"  # Hydra's job log: appended to
    assert after.pop(log)[1].startswith(before.pop(log)[1])
    assert {k: after[k] for k in before} == before, "nothing replaced, nothing deleted"
