"""The one training loop. SFT, the reward model and every preference loss run through `fit`, on one CPU or many
GPUs. Hugging Face accelerate is the engine (DDP, DeepSpeed ZeRO, mixed precision, gradient accumulation), and
PyTorch's own FSDP2 where `sharding: fsdp2` says so (sharding.py); this file only decides what an optimizer step
is. `train_step` reads like torchtune's single-device recipe: forward, loss, backward, clip, step. Around it:
process.py (this process in the launch), batches.py (cutting a global batch), logs.py (DVCLive), checkpoints.py
(resume), saving.py.

One optimizer step takes one *global batch*: batch_size (per device) x processes x accumulation steps items, drawn
by `batch_order` from the whole training set with the same seed on every rank (every rank holds the data). It is
cut into processes x accumulation micro-batches, and rank r runs micro-batches r, r + W, r + 2W, ... So what a step
sees does not depend on how it is spread: 2 ranks x 4 = 1 process x 8 = accumulation 2 x 4.

A micro-batch's loss is a *sum* over its items divided by the whole global batch's weight (its pair count, or its
response-token count for SFT), times processes x accumulation steps: DDP and ZeRO average gradients over ranks
and accelerate's backward divides by the accumulation steps, so the gradient is exactly the global batch's mean,
however the batch was cut (uneven micro-batches included). Under FSDP2 the gradients are summed and not divided
(`Process.loss_scale` is 1), which gives the same mean. Every rank runs the same number of forwards (collectives must
match): a rank whose micro-batch of a short last batch would be empty runs a stand-in item that counts zero.
"""

from __future__ import annotations

import logging
import math

import torch

from ..model.runtime import seed_everything
from ..pipeline.errors import ConfigError
from ..pipeline.params import section, start_stage
from ..pipeline.progress import track
from . import sharding
from .batches import batch_order, global_batch, rank_pieces
from .checkpoints import Checkpoints
from .logs import Logs, live_name, log_metrics
from .process import Process


class Objective:
    """What a training stage gives `fit`; one subclass per kind of training (sft_objective.SFTObjective,
    reward_objective.BradleyTerryObjective / PointwiseObjective, preference_objective.PairObjective /
    UnpairedObjective). Every one is built the same way, Objective(process, encode, train_rows, heldout_rows, cfg):
    it encodes the rows with the stage's Encoder and keeps the stage's params section. It then has

      name      the stage ("sft", "reward", "dpo"): log lines read "dpo: epoch 3: ...";
      show      the epoch metrics written to the log;
      lengths   each training item's tokens, for length-grouped batches;
      per       statistic -> the count statistic it is a mean over (the rest are means per `weight`);

    and these methods: wrap(model), the module `fit` trains (the model inside a ResponseLogprobs or a
    RewardScorer); weight(idx), an index list's weight in the mean (items; SFT: response tokens); loss(model, idx),
    (summed loss, {statistic: summed over the items}) of a micro-batch on the wrapped model; evaluate(model), the
    end-of-epoch metrics."""

    name = ""
    show: tuple[str, ...] = ("train_loss",)
    per: dict[str, str] = {}
    lengths: list[int]
    batch_fits_data = True  # refuse a batch_size above the training rows (one line, before any model loads)

    def __init__(self, process: Process, encode, train: list[dict], heldout: list[dict], cfg: dict):
        if self.batch_fits_data and len(train) < cfg["batch_size"]:
            raise ConfigError(f"params.yaml: {self.name}.batch_size: {cfg['batch_size']} is more than the "
                              f"{len(train)} training rows; lower it, or hold out fewer rows (data.heldout)")
        self.process, self.encode, self.cfg, self.pad = process, encode, cfg, encode.tokenizer.pad_token_id

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        raise NotImplementedError

    def weight(self, idx: list[int]) -> float:
        return len(idx)

    def loss(self, model, idx: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        raise NotImplementedError

    def evaluate(self, model) -> dict[str, float | None]:
        raise NotImplementedError

    def means(self, totals: dict[str, float]) -> dict[str, float | None]:
        return means(totals, self.per)


def means(totals: dict[str, float], per: dict[str, str] | None = None) -> dict[str, float | None]:
    """Each summed statistic as a mean: per its count statistic (`per`), else per "weight"; the count statistics
    themselves stay counts, and a mean over nothing is None."""
    per = per or {}
    counts = set(per.values())
    out = {}
    for k, v in totals.items():
        if k != "weight":
            n = totals[per.get(k, "weight")]
            out[k] = v if k in counts else (v / n if n else None)
    return out


def start_training(stage: str, description: str):
    """Every training stage's first lines: params.start_stage, then the stage's Run (this process: one process, or
    this rank of a torchrun / accelerate launch) and the seed, set the same on every rank so that every rank builds the
    same initial weights. Returns (params, the model section, the stage's section, run, seed); `dpo.seed`, when
    set, replaces the top-level seed for DPO's own randomness (LoRA init, batch order) over a fixed SFT model."""
    params = start_stage(stage, description)
    model_cfg, cfg = section(params, "model"), section(params, stage)
    seed = params["seed"] if cfg.get("seed") is None else cfg["seed"]
    run = Run.of_stage(stage, cfg, params)
    seed_everything(seed)
    return params, model_cfg, cfg, run, seed


class Run:
    """A training stage's run: this process in the launch (`process`), its DVCLive logs and, when it is a pipeline
    stage, its checkpoints (resume of a killed run)."""

    def __init__(self, process: Process, checkpoints: Checkpoints | None = None):
        self.process, self.checkpoints = process, checkpoints
        self.logs = Logs(process.is_main, checkpoints)

    @classmethod
    def of_stage(cls, stage: str, cfg: dict, params: dict) -> "Run":
        """The run of `stage` (its params section `cfg`) with checkpoints: the process is created first, as it
        sets up the process group the checkpoints wait on."""
        process = Process(section(params, "model")["device"], cfg, params["sharding"])
        return cls(process, Checkpoints(stage, params, process.accelerator))

    def end(self, summary: dict | None = None) -> None:
        """Every training stage's last line, once its outputs are written: `summary` joins the stage's DVCLive
        metrics.json (logs.py), the logs are closed, and the checkpoints go."""
        self.logs.end(summary)
        if self.checkpoints:
            self.checkpoints.finish()


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def lr_schedule(optimizer, schedule: str, total_steps: int, warmup_steps: int):
    """Linear warm-up over warmup_steps, then `schedule`: "constant" (the lab's DPO uses a fixed lr) or "cosine",
    a cosine decay to 10% of the lr at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prepare(process: Process, model: torch.nn.Module, cfg: dict, n_items: int,
            checkpoints: Checkpoints | None = None):
    """The prepared (or FSDP2-sharded) model, optimizer and lr schedule (unprepared: it steps once per optimizer
    step); `checkpoints` track FSDP2's sharded state."""
    if process.fsdp2:
        model = sharding.shard_fsdp2(model, process.device)
        if cfg["precision"] == "bf16":  # what accelerate's prepare does for the other engines
            model.forward = torch.autocast(process.device.type, dtype=torch.bfloat16)(model.forward)
    else:
        model.to(process.device)
    optimizer = adamw(model.parameters(), cfg["lr"], cfg["weight_decay"])
    steps = -(-n_items // global_batch(process, cfg["batch_size"])) * cfg["epochs"]
    scheduler = lr_schedule(optimizer, cfg["schedule"], steps, cfg["warmup_steps"])
    if process.fsdp2:
        if checkpoints:
            checkpoints.track_sharded(model, optimizer)
    else:
        if process.sharding in ("zero2", "zero3"):
            sharding.size_deepspeed_buckets(process.accelerator, model.model.config)
        model, optimizer = process.accelerator.prepare(model, optimizer)
    process.accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


def train_step(process: Process, model, optimizer, scheduler, objective: Objective, batch: list[int],
               max_grad_norm: float):
    """One optimizer step on one global batch. Returns this rank's summed statistics (with "loss" and "weight")
    and the gradient norm before clipping."""
    step_weight = objective.weight(batch)
    stats: dict[str, float] = {}
    for idx, counted in rank_pieces(process, batch, process.accumulation):
        with process.accumulate(model):  # the last micro-batch's backward syncs the gradients
            loss, item_stats = objective.loss(model, idx)
            process.backward(loss * (process.loss_scale * counted / step_weight))
        if counted:
            for name, value in {"loss": loss.detach(), "weight": objective.weight(idx), **item_stats}.items():
                stats[name] = stats.get(name, 0.0) + float(value)
    grad_norm = process.clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return stats, grad_norm


def fit(run: Run, model, objective: Objective, seed: int, live=None,
        step_live=None) -> tuple[list[dict], torch.nn.Module]:
    """Train `model` (objective.wrap'ped) for the stage's epochs. Returns each epoch's metrics (train_<statistic>,
    a mean per weight unit, and `objective.evaluate`'s) and the prepared wrapper, whose `.model` is the trained
    model. Logs the keys in `objective.show` once an epoch, every epoch metric to `live` (DVCLive, one layout for
    every stage: train_loss as train/loss, heldout_loss as heldout/loss) and per-step means to `step_live`."""
    cfg, name = objective.cfg, objective.name
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"the {name} model has no trainable parameters (the loss could not move); check {name}.lora")
    model = objective.wrap(model)
    process = run.process
    model, optimizer, scheduler = prepare(process, model, cfg, len(objective.lengths), run.checkpoints)
    batch_size = global_batch(process, cfg["batch_size"])
    log = logging.getLogger(name)  # lines read "dpo: epoch 3: ..."
    log.info("%d items, %d epochs; an optimizer step sees %d = %d per device x %d process(es) x %d accumulation "
             "step(s); precision %s%s", len(objective.lengths), cfg["epochs"], batch_size, cfg["batch_size"],
             process.world, process.accumulation, cfg["precision"],
             ", activation checkpointing" if cfg["gradient_checkpointing"] else "")
    history, start_epoch, start_step, resumed = [], 1, 0, {}
    position = run.checkpoints.load() if run.checkpoints else None
    if position:
        history, start_epoch, start_step = position["history"], position["epoch"], position["step"]
        # The epoch's statistics so far, summed over ranks: rank 0 carries them, the others start from zero.
        resumed = {k: v if process.is_main else 0.0 for k, v in position["totals"].items()}
        log.info("resuming from checkpoint %s: epoch %d, after step %d of it", run.checkpoints.latest,
                 start_epoch, start_step)
    every = run.checkpoints.every_steps if run.checkpoints else 0

    def checkpoint(epoch: int, step: int, totals: dict) -> None:
        if run.checkpoints:
            position = {"epoch": epoch, "step": step, "totals": totals, "history": history}
            run.checkpoints.save(position, run.logs.open_loggers)

    for epoch in range(start_epoch, cfg["epochs"] + 1):
        model.train()
        totals: dict[str, float] = resumed if epoch == start_epoch else {}
        batches = batch_order(objective.lengths, batch_size, seed + epoch)
        done = start_step if epoch == start_epoch else 0  # batches of this epoch already trained on
        for k, batch in enumerate(track(batches[done:], f"{name} epoch {epoch}", unit="steps",
                                        quiet=not process.is_main), start=done + 1):
            lr = scheduler.get_last_lr()[0]
            stats, grad_norm = train_step(process, model, optimizer, scheduler, objective, batch, cfg["max_grad_norm"])
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            if step_live is not None:
                log_metrics(step_live, objective.means(process.sum(stats)))
                log_metrics(step_live, {"grad_norm": grad_norm})
                step_live.log_metric("lr", lr)  # unrounded: a decayed lr can be far below 1e-6
                step_live.next_step()
            if every and k % every == 0 and k < len(batches):
                checkpoint(epoch, k, process.sum(totals))
        totals = process.sum(totals)
        model.eval()
        metrics = {f"train_{k}": v for k, v in objective.means(totals).items()}
        metrics.update(objective.evaluate(model))
        history.append(metrics)
        log.info("epoch %d: %s", epoch, " ".join(
            f"{k} {metrics[k]:.4f}" for k in objective.show if metrics.get(k) is not None))
        if live is not None:
            log_metrics(live, {live_name(k): v for k, v in metrics.items()})
            live.next_step()
        checkpoint(epoch + 1, 0, {})
    return history, model
