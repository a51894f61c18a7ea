"""Self-pretraining (lra/pretraining.py, `python -m lra.pretrain`, `pretrained=`, `pretrain=mlm`):
masked-token prediction on the task's training inputs alone, then fine-tuning from its encoder."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import CLI, ROOT, TINY, Runs, ok
from test_cluster import saved_step, slurm_job  # noqa: F401 (a fixture)
from test_scale import metric_rows
from wandb_records import read_offline_run

import lra.module
import lra.pretraining
import lra.train
from lra.data.base import LRADataModule
from lra.data.listops import ListOpsDataModule
from lra.models.encoder import PAD_ID
from lra.pretrain import RUN_NAME, pretrain, with_defaults
from lra.pretraining import ENCODER_FILE, FORMAT, MaskedPretraining, mask_tokens

STEPS = ["pretrain=mlm", "pretrain.steps=6"]


def encoder_of(run: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(run / ENCODER_FILE, weights_only=False)
    assert blob["format"] == FORMAT
    return blob["encoder"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_masking_never_touches_padding_and_masks_at_the_rate() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(1, 17, (64, 300))
    lengths = torch.randint(1, 301, (64,))
    tokens[torch.arange(300)[None, :] >= lengths[:, None]] = PAD_ID
    inputs, where = mask_tokens(tokens, 0.5, mask_id=17)
    pad = tokens == PAD_ID
    assert pad.sum() > 5000, "the test holds much padding"
    assert not where[pad].any(), "no padding position is masked"
    assert torch.equal(inputs[pad], tokens[pad]), "padding stays padding"
    assert (inputs[where] == 17).all() and torch.equal(inputs[~where], tokens[~where])
    rate = where.sum().item() / (~pad).sum().item()
    assert 0.48 < rate < 0.52, rate  # ~9,600 real tokens: 4 standard deviations is ±0.02
    _, none = mask_tokens(torch.zeros(4, 50, dtype=torch.long), 0.99, mask_id=17)
    assert not none.any(), "an all-padding batch masks nothing"


def test_pretraining_reads_the_training_inputs_alone_never_labels_or_other_splits(
    runs: Runs, tmp_path: Path, monkeypatch
) -> None:
    read, loaded, batches, masked = [], [], [], []
    real_read = ListOpsDataModule.read_split
    real_load = LRADataModule._load_cache
    real_step = MaskedPretraining.training_step
    real_mask = lra.pretraining.mask_tokens

    def recording_read(self, split):
        read.append(split)
        yield from real_read(self, split)

    def recording_load(self, split):
        loaded.append(split)
        return real_load(self, split)

    def recording_step(self, batch, batch_idx):
        batches.append(set(batch))
        return real_step(self, batch, batch_idx)

    def recording_mask(tokens, rate, mask_id):
        inputs, where = real_mask(tokens, rate, mask_id)
        masked.append((tokens.clone(), where.clone()))
        return inputs, where

    monkeypatch.setattr(ListOpsDataModule, "read_split", recording_read)
    monkeypatch.setattr(LRADataModule, "_load_cache", recording_load)
    monkeypatch.setattr(MaskedPretraining, "training_step", recording_step)
    monkeypatch.setattr(lra.pretraining, "mask_tokens", recording_mask)
    data = tmp_path / "fresh-data"  # nothing tokenised yet: what is read, is read here
    r = pretrain(runs.config(*STEPS, f"paths.data_dir={data}"))
    assert r["status"] == "finished" and r["job_type"] == "pretrain" and r["steps"] == 6
    assert read == ["train"], "only the training split was tokenised"
    assert loaded == ["train"], "only the training split was loaded"
    caches = {p.name for p in data.rglob("*") if p.is_dir() and "cache" in str(p)}
    assert not any(s in name for name in caches for s in ("val", "test")), caches
    assert len(batches) == 6 and all(b == {"input_ids"} for b in batches), "no label in a batch"
    assert all(not w[t == PAD_ID].any() for t, w in masked), "padding never masked in training"


def test_labels_do_not_reach_pretraining_other_labels_give_the_same_weights(
    runs: Runs, tmp_path: Path, monkeypatch
) -> None:
    straight = pretrain(runs.config(*STEPS, f"paths.data_dir={tmp_path / 'a'}", run_dir="a"))
    real_read = ListOpsDataModule.read_split

    def other_labels(self, split):
        for tokens, label in real_read(self, split):
            yield tokens, (label + 3) % 10

    monkeypatch.setattr(ListOpsDataModule, "read_split", other_labels)
    relabelled = pretrain(runs.config(*STEPS, f"paths.data_dir={tmp_path / 'b'}", run_dir="b"))
    assert straight["train_loss"] == relabelled["train_loss"]
    assert_same_weights(encoder_of(runs.root / "a"), encoder_of(runs.root / "b"))


def built(monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """Snapshots of the fine-tuning network: `init` as built, `loaded` after the encoder load."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_build, real_load = lra.train.build_module, lra.train.load_pretrained

    def build(cfg):
        module = real_build(cfg)
        seen["init"] = copy.deepcopy(module.net.state_dict())
        return module

    def load(net, path, cfg):
        facts = real_load(net, path, cfg)
        seen["loaded"] = copy.deepcopy(net.state_dict())
        return facts

    monkeypatch.setattr(lra.train, "build_module", build)
    monkeypatch.setattr(lra.train, "load_pretrained", load)
    return seen


def test_fine_tuning_loads_the_encoder_exactly_and_its_head_is_the_seeds_fresh_one(
    runs: Runs, monkeypatch
) -> None:
    pretrain(runs.config(*STEPS, run_dir="pre"))
    seen = built(monkeypatch)
    runs.train("trainer.max_steps=1", run_dir="scratch")
    scratch = seen.pop("init")
    r = runs.train("trainer.max_steps=1", f"pretrained={runs.root / 'pre'}", run_dir="tuned")
    loaded = seen["loaded"]
    pretrained = encoder_of(runs.root / "pre")
    vocab = loaded["encoder.embed.weight"].shape[0]
    assert pretrained["embed.weight"].shape[0] == vocab + 1, "the mask token's row, dropped"
    for k, v in pretrained.items():
        want = v[:vocab] if k == "embed.weight" else v
        assert torch.equal(loaded[f"encoder.{k}"], want), k
    assert {k for k in loaded if k.startswith("encoder.")} == {f"encoder.{k}" for k in pretrained}
    head = [k for k in loaded if not k.startswith("encoder.")]
    assert head, "the classifier head"
    for k in head:
        assert torch.equal(loaded[k], scratch[k]), f"{k}: the fresh head of seed 0, as from scratch"
    assert not torch.equal(loaded["encoder.embed.weight"], scratch["encoder.embed.weight"])
    facts = r["pretrained"]
    assert facts["path"] == str((runs.root / "pre" / ENCODER_FILE).resolve())
    assert (facts["objective"], facts["steps"], facts["mask_rate"]) == ("mlm", 6, 0.5)
    assert r["config"]["pretrained_from"] == facts
    (wb,) = (runs.root / "tuned" / "wandb").glob("offline-run-*")
    assert read_offline_run(wb)["config"]["pretrained_from"]["steps"] == 6, "in the W&B config"


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("task.encoder.mlp_dim=48", "task.encoder.mlp_dim: 64 there, 48 here"),
        ("model=baseline", "tensors missing"),
    ],
    ids=["another-width", "another-model"],
)
def test_a_mismatched_pretrained_encoder_is_a_clear_error(
    runs: Runs, override: str, named: str
) -> None:
    pretrain(runs.config(*STEPS, "model=igloo", run_dir="pre"))
    with pytest.raises(ValueError, match="does not match this run's") as e:
        runs.train("model=igloo", override, f"pretrained={runs.root / 'pre'}", run_dir="tuned")
    assert named in str(e.value)
    assert "Fine-tune with the task, model and overrides it was pretrained with" in str(e.value)
    r = runs.results("tuned")
    assert r["status"] == "failed" and "does not match" in r["reason"] and r["test_acc"] is None


def test_a_pretrained_path_without_an_encoder_names_the_command_that_makes_one(runs: Runs) -> None:
    with pytest.raises(FileNotFoundError, match="python -m lra.pretrain task=T model=M"):
        runs.train(f"pretrained={runs.root}")
    with pytest.raises(ValueError, match="both set"):
        runs.train("pretrain=mlm", f"pretrained={runs.root}", run_dir="both")


def test_igloo_lra_cannot_be_self_pretrained_and_says_why(runs: Runs) -> None:
    for run in (lambda: pretrain(runs.config(*STEPS, "model=igloo_lra")),
                lambda: runs.train(*STEPS, "model=igloo_lra", run_dir="both")):  # fmt: skip
        with pytest.raises(ValueError, match="model=igloo_lra cannot be self-pretrained") as e:
            run()
        assert "no per-token states" in str(e.value) and "(baseline, disentangled, igloo)" in str(
            e.value
        )


KILL = ["pretrain=mlm", "pretrain.steps=12", "pretrain.checkpoint_every_n_steps=5",
        "task.encoder.dropout=0.1",
        "logger=csv"]  # fmt: skip


def stop_pretraining_at(monkeypatch, step: int, how: str) -> None:
    """Pretraining step `step` sends SIGTERM to this process (a SLURM job), or crashes."""
    real = MaskedPretraining.training_step

    def step_and_stop(self, batch, batch_idx):
        if self.global_step == step:
            if how == "crash":
                raise RuntimeError("the node went away")
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, batch, batch_idx)

    monkeypatch.setattr(MaskedPretraining, "training_step", step_and_stop)


def stopped_by_sigterm(monkeypatch, run) -> None:
    """`run()` gets SIGTERM in pretraining step 7 and exits 143."""
    stop_pretraining_at(monkeypatch, 7, "sigterm")
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 128 + signal.SIGTERM


def requeued(monkeypatch) -> None:
    """From here on this process is SLURM job 4242 started again: it resumes by itself."""
    monkeypatch.undo()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")


def test_a_pretraining_stopped_by_sigterm_resumes_to_the_uninterrupted_weights(
    runs: Runs,
    slurm_job: Path,  # noqa: F811
    monkeypatch,
) -> None:
    stopped_by_sigterm(monkeypatch, lambda: pretrain(runs.config(*KILL)))
    run = runs.root / "run"
    assert saved_step(run) == 8 and not (run / ENCODER_FILE).exists()
    r = json.loads((run / "results.json").read_text())
    assert r["status"] == "interrupted" and r["job_type"] == "pretrain"
    requeued(monkeypatch)
    resumed = pretrain(runs.config(*KILL))
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    assert_like_uninterrupted(runs, resumed)


def test_a_crashed_pretraining_resumes_from_its_last_checkpoint_to_the_same_weights(
    runs: Runs, monkeypatch
) -> None:
    stop_pretraining_at(monkeypatch, 7, "crash")
    with pytest.raises(RuntimeError, match="the node went away"):
        pretrain(runs.config(*KILL))
    run = runs.root / "run"
    assert saved_step(run) == 5, "the periodic checkpoint before the crash"
    assert json.loads((run / "results.json").read_text())["status"] == "failed"
    monkeypatch.undo()
    resumed = pretrain(runs.config(*KILL, "resume=true"))
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert_like_uninterrupted(runs, resumed)


def assert_like_uninterrupted(runs: Runs, resumed: dict) -> None:
    straight = pretrain(runs.config(*KILL, run_dir="straight"))
    assert resumed["steps"] == straight["steps"] == 12
    assert resumed["train_loss"] == straight["train_loss"]
    assert_same_weights(encoder_of(runs.root / "run"), encoder_of(runs.root / "straight"))
    logged = {d: metric_rows(runs.root / d / "csv" / "metrics.csv") for d in ("run", "straight")}
    assert logged["run"] == logged["straight"], "every step's masked-token loss, logged once"


def test_pretrain_mlm_runs_both_stages_as_one_job(runs: Runs) -> None:
    r = runs.train("model=igloo", "pretrain=mlm", "pretrain.steps=3")
    run = runs.root / "run"
    stage = json.loads((run / "pretrain" / "results.json").read_text())
    assert (stage["job_type"], stage["steps"], stage["status"]) == ("pretrain", 3, "finished")
    assert stage["params"]["encoder"] + stage["params"]["pretrain_head"] == stage["params"]["total"]
    assert r["status"] == "finished" and r["steps"] == 4 and r["test_acc"] is not None
    assert r["pretrained"]["path"] == str((run / "pretrain" / ENCODER_FILE).resolve())
    assert r["run_name"] == "listops_small-igloo-mlm-s0"
    (wb,) = (run / "pretrain" / "wandb").glob("offline-run-*")
    assert read_offline_run(wb)["job_type"] == "pretrain"


def test_a_both_stages_job_crashed_in_fine_tuning_resumes_without_pretraining_again(
    runs: Runs, monkeypatch
) -> None:
    both = ["model=igloo", "pretrain=mlm", "pretrain.steps=3", "logger=csv"]
    real = lra.module.LRAClassifier.training_step

    def crash_at_3(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("the node went away")
        return real(self, batch, batch_idx)

    monkeypatch.setattr(lra.module.LRAClassifier, "training_step", crash_at_3)
    with pytest.raises(RuntimeError, match="the node went away"):
        runs.train(*both)
    run = runs.root / "run"
    failed = runs.results()
    assert failed["status"] == "failed" and failed["pretrained"]["objective"] == "mlm"
    stage = (
        (run / "pretrain" / ENCODER_FILE).stat().st_mtime_ns,
        (run / "pretrain" / "results.json").read_bytes(),
    )
    monkeypatch.undo()
    other = [*both[:2], "pretrain.steps=5", *both[3:], "resume=true"]
    with pytest.raises(ValueError, match="pretrain.steps: 3 there, 5 here"):
        runs.train(*other)  # a finished stage is never taken for another pretraining
    resumed = runs.train(*both, "resume=true")
    assert resumed["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    now = (
        (run / "pretrain" / ENCODER_FILE).stat().st_mtime_ns,
        (run / "pretrain" / "results.json").read_bytes(),
    )
    assert now == stage, "the finished pretraining is reused, not run again"
    straight = runs.train(*both, run_dir="straight")
    for key in ("steps", "val_loss", "test_acc", "test_loss"):
        assert resumed[key] == straight[key], key


def test_a_both_stages_job_signalled_in_its_pretraining_says_so_and_resumes_there(
    runs: Runs,
    slurm_job: Path,  # noqa: F811
    monkeypatch,
) -> None:
    stopped_by_sigterm(monkeypatch, lambda: runs.train(*KILL))
    r = runs.results()
    assert r["status"] == "interrupted", "the stage's status, not a failure of the job"
    assert r["reason"] == "pretraining stage: SLURM job 4242: SIGTERM; last.ckpt saved at step 8"
    requeued(monkeypatch)
    resumed = runs.train(*KILL)
    stage = json.loads((runs.root / "run" / "pretrain" / "results.json").read_text())
    assert stage["resumed_from"] == str(
        runs.root / "run" / "pretrain" / "checkpoints" / "last.ckpt"
    )
    assert resumed["status"] == "finished" and resumed["pretrained"]["steps"] == 12


def test_resume_finds_a_both_stages_job_stopped_in_its_pretraining(tmp_path: Path) -> None:
    from lra.config import run_dir

    runs = tmp_path / "listops_small-igloo-mlm-s0"
    older = runs / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    stopped = runs / "2026-01-02_00-00-00" / "pretrain" / "checkpoints" / "last.ckpt"
    for p in (older, stopped):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(older, (1, 1))
    assert run_dir(str(runs), "new", True, None) == str(runs / "2026-01-02_00-00-00")
    assert run_dir(str(runs), "new", False, None) == f"{runs}/new"


def test_a_fine_tuning_from_a_given_encoder_is_a_run_of_its_own_name(runs: Runs) -> None:
    pretrain(runs.config(*STEPS, run_dir="pre"))
    cfg = runs.config(f"pretrained={runs.root / 'pre'}")
    assert cfg.run_name == "listops_small-baseline-pretrained-s0", "never resumed as from scratch"
    with pytest.raises(ValueError, match="the checkpoint's weights would replace it"):
        runs.train(f"pretrained={runs.root / 'pre'}", "ckpt_path=/some/last.ckpt", run_dir="x")


def test_the_tied_head_leaves_the_padding_row_as_it_was(runs: Runs) -> None:
    pretrain(runs.config(*STEPS, "pretrain.head=tied", "task.encoder.dropout=0.1"))
    weights = encoder_of(runs.root / "run")["embed.weight"]
    assert torch.equal(weights[PAD_ID], torch.zeros_like(weights[PAD_ID]))
    assert weights[1:].abs().sum() > 0


def test_python_m_lra_pretrain_names_its_run_and_writes_the_encoder(cli: CLI) -> None:
    out = cli.root / "pre"
    ok(cli.run(*TINY, "model=disentangled", "pretrain.steps=3", f"paths.data_dir={cli.data_dir}",
               f"paths.log_dir={cli.root / 'outputs'}", f"hydra.run.dir={out}",
               module="lra.pretrain"))  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert r["run_name"] == "pretrain-listops_small-disentangled-mlm-s0" and r["steps"] == 3
    assert (out / ENCODER_FILE).is_file()
    assert with_defaults(["x", "pretrain=none"]) == ["x", "pretrain=none", RUN_NAME]
    assert (ROOT / "conf" / "pretrain" / "mlm.yaml").is_file()
