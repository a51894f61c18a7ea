"""Self-pretraining: the task's encoder trained on the task's own training inputs, then fine-tuned.

Amos, Berant & Gupta, "Never Train from Scratch: Fair Comparison of Long-Sequence Models Requires
Data-Driven Priors" (ICLR 2024, arXiv 2310.02980): a denoising objective over the downstream
task's training inputs alone, no other data, before the supervised training. Followed here:

- `objective: mlm`: masked-token prediction. Each non-padding token is masked with probability
  `pretrain.mask_rate` (default 0.5, the rate of the paper's code, IdoAmos/not-from-scratch,
  `dataset.mlm_prob=0.5`); a masked token is replaced by the mask token, a reserved id added to
  the vocabulary (`mask_id = task.vocab_size`; no BERT-style 80/10/10 replacement); the loss is
  the cross-entropy at the masked positions only, over the task's vocabulary (the mask id is
  never a target). Padding (token 0) is never masked and never a target.
- The output projection: `pretrain.head: separate` (Linear(D, V)) or `tied` (the embedding's
  rows, transposed, with a bias of its own).
- Causal next-token prediction (the paper's objective for causal models) is not offered: no
  mixer here is causal (baseline's and disentangled's attention and IGLOO's patches all read
  both sides of a position).

The pretraining network is the fine-tuning encoder (matched to the same parameter budget by
`lra.matching`, with the same knobs) plus the mask token's embedding row and the projection;
neither of those counts in the budget. `python -m lra.pretrain` writes `encoder.pt` (FORMAT):
the encoder's weights and what made them. `pretrained=PATH` loads them into the fine-tuning
network strictly: every encoder tensor must be there, with its shape, or the run stops naming
the mismatch; the mask row is dropped (fine-tuning inputs hold no mask token), and the
classifier head is the fresh one the seed gives. `pretrain=mlm` in `python -m lra.train` runs
both stages as one job, the pretraining in `RUN_DIR/pretrain/`.

The masks are drawn from torch's generator, which `StepSeed` reseeds before every step from
(seed, rank, step): a resumed pretraining run draws the masks the uninterrupted one drew.

`model=igloo_lra` cannot take part: it is lra-igloo's whole network, whose IGLOO layer pools the
sequence into one vector, so there is no per-token state for a token-level objective to
predict from, and no encoder apart from its head to hand to fine-tuning.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from lra.build import build_datamodule, build_net, encoder_config, validate
from lra.callbacks import AtomicCheckpointIO, LastCheckpoint, RunFacts, StepSeed, check_checkpoint
from lra.cluster import SlurmSignals, cap_threads, note_job_for_workers, with_slurm_environment
from lra.config import LAST, STAGE, in_multirun
from lra.console import print_summary
from lra.io import atomic_path, write_json
from lra.job import StageStopped, find_resume_dir, finished_results, output_dir, run_job
from lra.loggers import build_loggers, log_run_facts
from lra.matching import match_parameters, matched_facts
from lra.models.encoder import PAD_ID
from lra.module import LRAClassifier
from lra.registry import TASKS

log = logging.getLogger(__name__)

FORMAT = "lra-pretrained-encoder/1"
ENCODER_FILE = "encoder.pt"  # in a pretraining run's directory
OBJECTIVES = ("none", "mlm")
HEADS = ("separate", "tied")
EMBEDDING = "embed.weight"  # the encoder's token embedding: one row per id, the mask id last


def objective(cfg: DictConfig) -> str:
    """`pretrain.objective` of the config: none (train from scratch) or mlm."""
    name = str(OmegaConf.select(cfg, "pretrain.objective", default="none"))
    if name not in OBJECTIVES:
        raise ValueError(
            f"pretrain.objective={name!r} is not one of {', '.join(OBJECTIVES)} (conf/pretrain/)"
        )
    return name


def refuse_whole_networks(cfg: DictConfig) -> None:
    """Only the shared encoder can be self-pretrained: say why another architecture cannot."""
    arch = cfg.model.get("architecture", "encoder")
    if arch != "encoder":
        raise ValueError(
            f"model={cfg.model.name} cannot be self-pretrained: it is a whole network "
            f"(architecture={arch}, lra-igloo's Keras model) whose IGLOO layer pools the sequence "
            "into one vector, so it has no per-token states for masked-token prediction and no "
            "encoder apart from its head to fine-tune. Self-pretraining takes the encoder models "
            "(baseline, disentangled, igloo)"
        )


def mask_tokens(
    tokens: torch.Tensor, rate: float, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, where): each non-padding token masked with probability `rate` (replaced by
    `mask_id`), drawn from torch's generator; `where` [B, n] is True at the masked positions.
    Padding is never masked."""
    draw = torch.rand(tokens.shape, device=tokens.device) < rate
    where = draw & (tokens != PAD_ID)
    return tokens.masked_fill(where, mask_id), where


class MaskedTokenNet(nn.Module):
    """The encoder (its embedding one row longer: the mask id) and a projection over the task's
    vocabulary, read at the masked positions only."""

    def __init__(self, encoder: nn.Module, vocab_size: int, head: str = "separate") -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"pretrain.head must be one of {', '.join(HEADS)}, not '{head}'")
        self.encoder = encoder
        self.vocab_size = vocab_size
        self.tied = head == "tied"
        d = encoder.embed.weight.shape[1]
        if self.tied:
            self.head = None
            self.bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.head = nn.Linear(d, vocab_size)

    def forward(self, inputs: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Logits [masked positions, vocab_size] of the tokens under the masks."""
        h = self.encoder.token_states(inputs)[where]  # [M, D]
        if self.tied:
            # padding is never a target: its logit is -inf, so the padding row of the embedding
            # gets no gradient through the projection and stays as the encoder keeps it
            logits = h @ self.encoder.embed.weight[: self.vocab_size].T + self.bias
            return logits.index_fill(1, torch.tensor([PAD_ID], device=h.device), float("-inf"))
        return self.head(h)

    def head_parameters(self) -> int:
        """The pretraining's own parameters: the projection and the mask token's embedding."""
        own = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("encoder."))
        return own + self.encoder.embed.weight.shape[1]


class MaskedPretraining(LRAClassifier):
    """Masked-token prediction with the classifier's optimiser, schedule and non-finite checks;
    `train/acc` is the accuracy on the masked tokens."""

    def __init__(self, net: MaskedTokenNet, optim: dict[str, Any], mask_rate: float,
                 inputs: tuple[str, ...], compile: bool = False) -> None:  # fmt: skip
        super().__init__(net, num_classes=net.vocab_size, optim=optim, compile=compile)
        if not 0 < mask_rate < 1:
            raise ValueError(f"pretrain.mask_rate={mask_rate}: must be in (0, 1)")
        self.mask_rate = mask_rate
        self.mask_id = net.vocab_size
        self.inputs = inputs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # every document a sequence of its own (Retrieval's two), padded to one length
        docs = [batch[name] for name in self.inputs]
        n = max(d.shape[1] for d in docs)
        tokens = torch.cat([F.pad(d, (0, n - d.shape[1]), value=PAD_ID) for d in docs])
        inputs, where = mask_tokens(tokens, self.mask_rate, self.mask_id)
        logits = self.run_net(inputs, where)
        targets = tokens[where]
        # a batch with no token masked (tiny rates, short sequences) teaches nothing: loss 0
        loss = F.cross_entropy(logits, targets) if targets.numel() else logits.sum() * 0.0
        self.note_non_finite(loss.detach())
        every = self.trainer.log_every_n_steps  # on a GPU a check waits for the step
        if loss.device.type != "cuda" or (self.global_step + 1) % every == 0:
            self.check_finite()
        if targets.numel():
            self.train_acc(logits.argmax(-1), targets)
            self.log("train/acc", self.train_acc, prog_bar=True)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/masked", where.sum().float() / (tokens != PAD_ID).sum().clamp_min(1))
        return loss


def with_mask_id(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose vocabulary has one id more: the mask token's."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.task.vocab_size = int(cfg.task.vocab_size) + 1
    return out


def build_pretraining(cfg: DictConfig) -> MaskedPretraining:
    """The pretraining module of a matched run config (`match_parameters` already applied)."""
    refuse_whole_networks(cfg)
    p = cfg.pretrain
    encoder = build_net(with_mask_id(cfg)).encoder
    net = MaskedTokenNet(encoder, int(cfg.task.vocab_size), str(p.get("head", "separate")))
    optim = {
        **OmegaConf.to_container(cfg.task.optim, resolve=True),
        **OmegaConf.to_container(p.optim, resolve=True),
        "max_steps": int(p.steps),
    }
    inputs = TASKS.get(cfg.task.family).inputs
    return MaskedPretraining(net, optim, float(p.mask_rate), inputs, bool(cfg.get("compile")))


def pretraining_config(cfg: DictConfig) -> DictConfig:
    """The run config as pretraining trains it: the pretraining's batch and steps, W&B job type
    `pretrain`, no validation, no test."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.task.optim.batch_size = out.pretrain.optim.batch_size
        out.trainer.max_steps = out.pretrain.steps
        out.trainer.limit_val_batches = 0
        out.trainer.num_sanity_val_steps = 0
        out.checkpoint_every_n_steps = out.pretrain.checkpoint_every_n_steps
        if out.logger.get("wandb"):
            out.logger.wandb.job_type = "pretrain"
    return out


def fit_pretrain(cfg: DictConfig, record: dict[str, Any]) -> dict[str, Any]:
    """One pretraining run (`lra.job.run_job`'s body): masked-token prediction on the training
    inputs, checkpoints and resume as a fine-tuning run, then `encoder.pt` and results.json."""
    t_start = time.time()
    validate(cfg)
    name = objective(cfg)
    if name == "none":
        raise ValueError("pretrain=none: nothing to pretrain; choose an objective, pretrain=mlm")
    refuse_whole_networks(cfg)
    run_dir = output_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.update(started=t_start, run_name=cfg.run_name, run_dir=str(run_dir), task=cfg.task.name,
                  model=cfg.model.name, seed=cfg.seed, job_type="pretrain")  # fmt: skip
    pl.seed_everything(cfg.seed, workers=True)
    cap_threads()
    resume_dir = find_resume_dir(cfg, run_dir)
    ckpt_path = str(resume_dir / LAST) if resume_dir else None
    if resume_dir and (done := finished_results(resume_dir)) is not None:
        record["done"] = True
        print(f"{cfg.run_name}: pretraining already finished in {resume_dir}", flush=True)
        return done

    cfg = pretraining_config(match_parameters(cfg))
    datamodule = build_datamodule(cfg)
    datamodule.training_inputs_only()
    module = build_pretraining(cfg)
    net: MaskedTokenNet = module.net
    # the encoder as fine-tuning builds it (without the mask row), and what pretraining adds
    encoder = sum(p.numel() for p in net.encoder.parameters() if p.requires_grad)
    encoder -= net.encoder.embed.weight.shape[1]
    head = net.head_parameters()
    params = {**matched_facts(cfg), "encoder": encoder, "pretrain_head": head,
              "total": encoder + head}  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True)
    config["per_device_batch"] = datamodule.batch_size
    record.update(params=params, resumed_from=ckpt_path, config=config)
    stamp = {"task": cfg.task.name, "model": cfg.model.name, "total": params["total"],
             "job_type": "pretrain"}  # fmt: skip
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        check_checkpoint(state, ckpt_path, module, stamp)
        log.info("resuming pretraining %s from %s", cfg.run_name, ckpt_path)

    signals = record["signals"] = SlurmSignals()
    last = LastCheckpoint(run_dir / "checkpoints", cfg.checkpoint_every_n_steps, signals)
    resume_step = int(state["global_step"]) if ckpt_path is not None else 0
    loggers = build_loggers(cfg, run_dir, resume_dir, resume_step)
    log_run_facts(loggers, config, params)
    plugins = with_slurm_environment(
        [hydra.utils.instantiate(p) for p in cfg.trainer.get("plugins") or []]
    )
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, default_root_dir=run_dir,
        callbacks=[last, signals, StepSeed(cfg.seed), RunFacts(stamp)],
        plugins=[*plugins, AtomicCheckpointIO()],
    )  # fmt: skip
    record["trainer"] = trainer
    if in_multirun():  # local DDP workers run this job, not the whole sweep (lra.cluster)
        hc = HydraConfig.get()
        note_job_for_workers(hc.overrides.task, hc.runtime.output_dir)
    t_fit = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.time() - t_fit
    metrics = trainer.callback_metrics
    facts = {
        "objective": name,
        "mask_rate": float(cfg.pretrain.mask_rate),
        "head": str(cfg.pretrain.get("head", "separate")),
        "steps": trainer.global_step,
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
    }
    results = {
        "run_name": cfg.run_name,
        "run_dir": str(run_dir),
        "job_type": "pretrain",
        "task": cfg.task.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "status": "finished",
        "pretrain": facts,
        "encoder_file": str(run_dir / ENCODER_FILE),
        "params": params,
        "data_source": datamodule.source(),
        "train_loss": _float(metrics.get("train/loss")),
        "train_masked_acc": _float(metrics.get("train/acc")),
        "steps": trainer.global_step,
        "resumed_from": ckpt_path,
        "fit_seconds": fit_seconds,
        "wall_seconds": time.time() - t_start,
        "config": config,
    }
    if trainer.is_global_zero:
        save_encoder(run_dir / ENCODER_FILE, net, cfg, facts)
        write_json(run_dir / "results.json", results)
        print_summary(results)
    record["done"] = True
    trainer.strategy.barrier("encoder.pt written")  # every rank fine-tunes from the file
    return results


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def save_encoder(path: Path, net: MaskedTokenNet, cfg: DictConfig, facts: dict[str, Any]) -> None:
    """`encoder.pt`, atomically: the encoder's weights (the mask row included) and their story."""
    state = {k: v.detach().cpu().clone() for k, v in net.encoder.state_dict().items()}
    blob = {
        "format": FORMAT,
        "encoder": state,
        "vocab_size": net.vocab_size,
        "mask_id": net.vocab_size,
        **facts,
        "encoder_config": OmegaConf.to_container(encoder_config(cfg), resolve=True),
        "mixer": OmegaConf.to_container(cfg.model.get("mixer") or {}, resolve=True),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(blob, f)


def encoder_file(path: str | Path) -> Path:
    """The `encoder.pt` that `pretrained=PATH` names: the file, or a pretraining run's folder."""
    p = Path(path)
    if p.is_dir():
        p = p / ENCODER_FILE
    if not p.is_file():
        raise FileNotFoundError(
            f"pretrained={path}: no {ENCODER_FILE} there. It is written by a finished pretraining "
            "run: python -m lra.pretrain task=T model=M (then pretrained=<its run folder>), or "
            "pretrain=mlm in python -m lra.train runs both stages"
        )
    return p


def differences(theirs: dict[str, Any], ours: dict[str, Any], prefix: str) -> list[str]:
    keys = sorted(theirs.keys() | ours.keys())
    return [f"{prefix}{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in keys
            if theirs.get(k) != ours.get(k)]  # fmt: skip


def load_pretrained(net: nn.Module, path: str | Path, cfg: DictConfig) -> dict[str, Any]:
    """Load `encoder.pt` (or a pretraining run's folder) into `net.encoder`, strictly: the same
    tensors with the same shapes (the mask row dropped), else ValueError naming the mismatch and
    the config keys that differ. Returns what is recorded of it (path, objective, steps, ...)."""
    file = encoder_file(path)
    blob = torch.load(file, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(
            f"pretrained={path}: {file} is not a pretrained encoder ({FORMAT}, written by "
            "python -m lra.pretrain); a training checkpoint resumes with ckpt_path= instead"
        )
    vocab = int(cfg.task.vocab_size)
    theirs = dict(blob["encoder"])
    if EMBEDDING in theirs and blob["vocab_size"] == vocab:
        theirs[EMBEDDING] = theirs[EMBEDDING][:vocab]  # the mask row: no mask token here
    ours = net.encoder.state_dict()
    missing = sorted(ours.keys() - theirs.keys())
    unexpected = sorted(theirs.keys() - ours.keys())
    shapes = {k: v.shape for k, v in ours.items()}
    reshaped = [
        f"{k} {tuple(theirs[k].shape)} there, {tuple(shapes[k])} here"
        for k in sorted(ours.keys() & theirs.keys())
        if theirs[k].shape != shapes[k]
    ]
    if missing or unexpected or reshaped or blob["vocab_size"] != vocab:
        mine = OmegaConf.to_container(encoder_config(cfg), resolve=True)
        mixer = OmegaConf.to_container(cfg.model.get("mixer") or {}, resolve=True)
        why = [
            *(["task.vocab_size: "
               f"{blob['vocab_size']} there, {vocab} here"] if blob["vocab_size"] != vocab else []),
            *differences(blob.get("encoder_config") or {}, mine, "task.encoder."),
            *differences(blob.get("mixer") or {}, mixer, "model.mixer."),
        ]  # fmt: skip
        parts = [
            f"{len(missing)} tensors missing (e.g. {missing[:2]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})" if unexpected else "",
            f"{len(reshaped)} of another shape (e.g. {reshaped[:2]})" if reshaped else "",
        ]
        raise ValueError(
            f"pretrained={path}: its encoder (task={blob.get('task')} model={blob.get('model')}) "
            f"does not match this run's (task={cfg.task.name} model={cfg.model.name}): "
            + "; ".join(p for p in parts if p)
            + (". The configs differ in " + "; ".join(why[:6]) if why else "")
            + ". Fine-tune with the task, model and overrides it was pretrained with"
        )
    net.encoder.load_state_dict(theirs, strict=True)
    if blob.get("task") != cfg.task.name:
        log.warning("pretrained=%s was pretrained on task %s, not %s: not self-pretraining",
                    path, blob.get("task"), cfg.task.name)  # fmt: skip
    keys = ("objective", "mask_rate", "head", "steps", "task", "model", "seed")
    return {"path": str(file.resolve()), **{k: blob.get(k) for k in keys}}


def stage(cfg: DictConfig, run_dir: Path) -> Path:
    """`pretrain=mlm` in `lra.train`: the pretraining stage of the job, in `run_dir/pretrain/`
    (resumed there if it was cut short, skipped if it finished); returns its encoder file."""

    out = copy.deepcopy(cfg)
    where = run_dir / STAGE
    with open_dict(out):
        out.paths.output_dir = str(where)
        out.run_name = f"{cfg.run_name}-pretrain"
        out.resume = True
        out.ckpt_path = None
    done = finished_results(where)
    if done is not None:  # a finished stage is reused only for the pretraining it was
        asked = OmegaConf.to_container(out.pretrain, resolve=True)
        made = (done.get("config") or {}).get("pretrain") or {}
        for key in ("checkpoint_every_n_steps",):  # how it was saved, not what it made
            asked.pop(key, None), made.pop(key, None)
        why = differences(made, asked, "pretrain.")
        if why:
            raise ValueError(
                f"{where} holds a finished pretraining made with other settings ("
                + "; ".join(why[:4])
                + "): rerun with those, or start this job in a new run directory (resume=false)"
            )
    if rank_zero_only.rank == 0:
        log.info("pretraining stage (%s) in %s", objective(cfg), where)
    try:
        run_job(out, fit_pretrain)
    except SystemExit as e:
        if not e.code:
            raise
        try:
            stopped = json.loads((where / "results.json").read_text())
        except (OSError, ValueError):
            stopped = {}
        status = stopped.get("status", "failed")
        reason = f"pretraining stage: {stopped.get('reason') or f'exit code {e.code}'}"
        raise StageStopped(e.code, status, reason) from e
    return where / ENCODER_FILE
