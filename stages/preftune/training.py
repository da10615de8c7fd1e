"""The one training loop. SFT, the reward model and every preference loss run through `fit`, on one CPU or many
GPUs. Hugging Face accelerate is the engine (DDP, DeepSpeed ZeRO, mixed precision, gradient accumulation), and
PyTorch's own FSDP2 where `sharding: fsdp2` says so (sharding.py); this file only decides what an optimizer step is. `train_step` reads like torchtune's single-device recipe: forward,
loss, backward, clip, step.

One optimizer step takes one *global batch*: batch_size (per device) x processes x accumulation steps items, drawn
by `batch_order` from the whole training set with the same seed on every rank (every rank holds the data). It is
cut into processes x accumulation micro-batches, and rank r runs micro-batches r, r + W, r + 2W, ... So what a step
sees does not depend on how it is spread: 2 ranks x 4 = 1 process x 8 = accumulation 2 x 4.

A micro-batch's loss is a *sum* over its items divided by the whole global batch's weight (its pair count, or its
response-token count for SFT), times processes x accumulation steps: DDP and ZeRO average gradients over ranks
and accelerate's backward divides by the accumulation steps, so the gradient is exactly the global batch's mean,
however the batch was cut (uneven micro-batches included). Under FSDP2 the gradients are summed and not divided
(`Run.loss_scale` is 1), which gives the same mean. Every rank runs the same number of forwards (collectives must
match): a rank whose micro-batch of a short last batch would be empty runs a stand-in item that counts zero.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from contextlib import nullcontext
from typing import Callable

import torch
from tqdm import tqdm

from . import sharding
from .batching import EVAL_BATCH, batch_order
from .checkpoints import Checkpoints
from .errors import ConfigError
from .modeling import check_precision, resolve_device, seed_everything
from .params import section, start_stage

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # params.yaml's names -> accelerate's


class Objective:
    """What a training stage gives `fit`; one subclass per kind of training (supervised.SFTObjective,
    reward_training.BradleyTerryObjective / PointwiseObjective, preference.PairObjective / UnpairedObjective).
    Every one is built the same way, Objective(run, encode, train_rows, heldout_rows, cfg): it encodes the rows
    with the stage's Encoder and keeps the stage's params section. It then has

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

    def __init__(self, run: "Run", encode, train: list[dict], heldout: list[dict], cfg: dict):
        if self.batch_fits_data and len(train) < cfg["batch_size"]:
            raise ConfigError(f"params.yaml: {self.name}.batch_size: {cfg['batch_size']} is more than the "
                              f"{len(train)} training rows; lower it, or hold out fewer rows (data.heldout)")
        self.run, self.encode, self.cfg, self.pad = run, encode, cfg, encode.tokenizer.pad_token_id

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
    """Every training stage's first lines: params.start_stage, then this process's Run (one process, or this rank
    of a torchrun / accelerate launch) and the seed, set the same on every rank so that every rank builds the
    same initial weights. Returns (params, the model section, the stage's section, run, seed); `dpo.seed`, when
    set, replaces the top-level seed for DPO's own randomness (LoRA init, batch order) over a fixed SFT model."""
    params = start_stage(stage, description)
    model_cfg, cfg = section(params, "model"), section(params, stage)
    seed = params["seed"] if cfg.get("seed") is None else cfg["seed"]
    run = Run(model_cfg["device"], cfg, stage, params)
    seed_everything(seed)
    return params, model_cfg, cfg, run, seed


class Run:
    """This process's place in a launch (one process, or N ranks under torchrun / accelerate launch), the
    Accelerator that carries it, and how its model is sharded (sharding.py). Create it before loading a model: it
    sets up the process group."""

    def __init__(self, device: str, cfg: dict, stage: str | None = None, params: dict | None = None,
                 shard: str | None = None):
        """`stage` and `params` (the whole params.yaml) turn on checkpoints and resume (checkpoints.py); `shard`
        (params' `sharding` when not given; benchmarks give it) says how the model is sharded."""
        resolved = resolve_device(device)
        sharding.before_accelerate(resolved.type)
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        if cfg["precision"] == "fp16" and resolved.type == "cpu":
            raise ConfigError("params.yaml: precision fp16 needs a GPU (CPU autocast is bf16 only); use bf16 or fp32")
        check_precision(resolved.type, cfg["precision"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:  # one process may build several Runs (tests, benchmarks)
            AcceleratorState._reset_state()
        sharding.refuse_accelerate_config()
        self.sharding = sharding.effective(shard or (params["sharding"] if params else "none"), world)
        self.fsdp2 = self.sharding == "fsdp2"
        if self.fsdp2 and cfg["precision"] == "fp16":
            raise ConfigError("params.yaml: sharding: fsdp2 trains in fp32 or bf16; fp16 would need a gradient "
                              "scaler; use precision: bf16")
        self.accelerator = Accelerator(mixed_precision=PRECISIONS[cfg["precision"]],
                                       gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
                                       **sharding.accelerator_options(self.sharding, cfg, resolved.type))
        sharding.whole_model_loading(self.sharding)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.device = self.accelerator.device
        self.accumulation = cfg["gradient_accumulation_steps"]
        self.sharded = self.sharding != "none"
        self.checkpoints = Checkpoints(stage, params, self.accelerator) if stage else None
        self.lives: dict = {}

    # What a micro-batch's backward needs, the same for every engine. accelerate's backward divides by the
    # accumulation steps and DDP and ZeRO average over ranks, so the loss is scaled up by both; FSDP2 sums
    # (sharding.py), so there it is not.
    @property
    def loss_scale(self) -> int:
        return 1 if self.fsdp2 else self.world * self.accumulation

    def accumulate(self, model):
        return nullcontext() if self.fsdp2 else self.accelerator.accumulate(model)

    def backward(self, loss: torch.Tensor) -> None:
        if self.fsdp2:
            loss.backward()
        else:
            self.accelerator.backward(loss)

    def clip_grad_norm(self, model, max_norm: float) -> float | None:
        """Clip the gradients of the trainable parameters; the norm before clipping (None where DeepSpeed,
        which clips inside its engine, reports none)."""
        if self.fsdp2:
            return sharding.clip_fsdp2(model, max_norm)
        norm = self.accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
        return None if norm is None else float(norm)

    def global_batch(self, batch_size: int) -> int:
        return batch_size * self.world * self.accumulation

    def my_pieces(self, batch: list[int], per_rank: int) -> list[tuple[list[int], bool]]:
        """This rank's `per_rank` pieces of `batch` (cut into world x per_rank contiguous pieces), each with
        whether it counts; an empty piece becomes a stand-in (the batch's first item) that counts zero."""
        parts = self.world * per_rank
        size, extra = divmod(len(batch), parts)
        bounds = [0]
        for k in range(parts):
            bounds.append(bounds[-1] + size + (k < extra))
        pieces = [batch[bounds[k]:bounds[k + 1]] for k in range(parts)]
        return [(p, True) if p else (batch[:1], False) for p in pieces[self.rank::self.world]]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each statistic over ranks (every rank must call this with the same keys)."""
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        total = self.accelerator.reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                                     device=self.device), "sum")
        return dict(zip(keys, total.tolist()))

    @torch.no_grad()
    def evaluate_sums(self, n: int, sums: Callable[[list[int]], dict[str, torch.Tensor]], batch_size: int = EVAL_BATCH) -> dict:
        """Per-item statistics summed over items 0..n-1, which are spread over the ranks."""
        totals: dict[str, float] = {}
        for start in range(0, n, batch_size * self.world):
            (idx, counted), = self.my_pieces(list(range(start, min(start + batch_size * self.world, n))), 1)
            for name, value in sums(idx).items():
                totals[name] = totals.get(name, 0.0) + (float(value) if counted else 0.0)
        return self.sum(totals)

    def live(self, directory: str):
        """A DVCLive logger on the main process (continuing a checkpoint's, when resuming); elsewhere one that
        does nothing."""
        step = self.checkpoints.restore_live(directory) if self.checkpoints else None
        if not self.is_main:
            return _Silent()
        live = live_logger(directory, resume=step is not None)
        if step is not None:
            live.step = step
        self.lives[directory] = live
        return live

    def end(self, summary: dict | None = None) -> None:
        """Every training stage's last line, once its outputs are written: `summary` (None values left out) joins
        the stage's DVCLive metrics.json beside the last epoch's metrics, every DVCLive logger is closed, and the
        checkpoints go."""
        for i, live in enumerate(self.lives.values()):
            if summary and i == 0:
                log_metrics(live, summary)
            live.end()
        if self.checkpoints:
            self.checkpoints.finish()

    def save_pretrained(self, model, path: str) -> None:
        """Save the trained model inside the prepared wrapper (its `.model`), once, from the main process.
        Every rank calls this: under FSDP and ZeRO-3 the full weights are gathered here."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if self.fsdp2:
            state = sharding.full_state_dict_fsdp2(model)
        else:
            state = acc.get_state_dict(model) if self.sharded else None
        if self.is_main:
            inner = model.model if self.fsdp2 else acc.unwrap_model(model).model
            if state is not None:
                state = without_tied_copies(inner, {k.removeprefix("model."): v for k, v in state.items()})
            if inner.config.use_cache is False:  # enable_checkpointing's: a training setting, not saved with the model
                inner.gradient_checkpointing_disable()
                inner.config.use_cache = True
            inner.save_pretrained(path, state_dict=state)
        acc.wait_for_everyone()


def without_tied_copies(model, state: dict) -> dict:
    """A gathered state dict without the second names of tied weights (GPT-2's lm_head.weight is wte's): gathering
    copies each name's tensor, so save_pretrained would store the tied head twice; one process saves it once."""
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in tied}


class _Silent:
    def log_metric(self, *args, **kwargs) -> None:
        pass

    def next_step(self) -> None:
        pass

    def end(self) -> None:
        pass


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


def enable_checkpointing(model) -> None:
    """Activation checkpointing: keep each layer's input, recompute the layer in backward (less memory, ~30% more
    compute). Non-reentrant, so it needs no input gradients and works under LoRA, DDP and FSDP."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    release_heap_per_layer(model)


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to release
        return None


def release_heap_per_layer(model) -> None:
    """On CPU, hand the heap's freed pages back to the OS before each checkpointed layer runs.

    A checkpointed layer's temporaries are freed as soon as it ends, but glibc keeps them: the layer inputs kept for
    backward sit among them, so the heap cannot shrink, and each layer left about 0.3 GB resident at 1,024 tokens
    (SmolLM2-135M, 8 pairs packed: peak RSS 11.5 GB while saved tensors were 0.8 GB). malloc_trim(0) returns those
    pages (peak 6.7 GB, the step as fast within noise: benchmarks/README.md). GPUs have their own allocator: no-op."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    trim = _glibc_malloc_trim()
    if trim is None:
        return

    def before_layer(layer, args):
        if next(layer.parameters()).device.type == "cpu":
            trim(0)

    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.register_forward_pre_hook(before_layer)


def prepare(run: Run, model: torch.nn.Module, cfg: dict, n_items: int):
    """The prepared (or FSDP2-sharded) model, optimizer and lr schedule (unprepared: it steps once per optimizer
    step)."""
    if run.fsdp2:
        model = sharding.shard_fsdp2(model, run.device)
        if cfg["precision"] == "bf16":  # what accelerate's prepare does for the other engines
            model.forward = torch.autocast(run.device.type, dtype=torch.bfloat16)(model.forward)
    else:
        model.to(run.device)
    optimizer = adamw(model.parameters(), cfg["lr"], cfg["weight_decay"])
    steps = -(-n_items // run.global_batch(cfg["batch_size"])) * cfg["epochs"]
    scheduler = lr_schedule(optimizer, cfg["schedule"], steps, cfg["warmup_steps"])
    if run.fsdp2:
        if run.checkpoints:
            run.checkpoints.track_sharded(model, optimizer)
    else:
        if run.sharding in ("zero2", "zero3"):
            sharding.size_deepspeed_buckets(run.accelerator, model.model.config)
        model, optimizer = run.accelerator.prepare(model, optimizer)
    run.accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


def train_step(run: Run, model, optimizer, scheduler, objective: Objective, batch: list[int], max_grad_norm: float):
    """One optimizer step on one global batch. Returns this rank's summed statistics (with "loss" and "weight")
    and the gradient norm before clipping."""
    step_weight = objective.weight(batch)
    stats: dict[str, float] = {}
    for idx, counted in run.my_pieces(batch, run.accumulation):
        with run.accumulate(model):  # the last micro-batch's backward syncs the gradients
            loss, item_stats = objective.loss(model, idx)
            run.backward(loss * (run.loss_scale * counted / step_weight))
        if counted:
            for name, value in {"loss": loss.detach(), "weight": objective.weight(idx), **item_stats}.items():
                stats[name] = stats.get(name, 0.0) + float(value)
    grad_norm = run.clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return stats, grad_norm


def fit(run: Run, model, objective: Objective, seed: int, live=None, step_live=None) -> tuple[list[dict], torch.nn.Module]:
    """Train `model` (objective.wrap'ped) for the stage's epochs. Returns each epoch's metrics (train_<statistic>,
    a mean per weight unit, and `objective.evaluate`'s) and the prepared wrapper, whose `.model` is the trained
    model. Logs the keys in `objective.show` once an epoch, every epoch metric to `live` (DVCLive, one layout for
    every stage: train_loss as train/loss, heldout_loss as heldout/loss) and per-step means to `step_live`."""
    cfg, name = objective.cfg, objective.name
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"the {name} model has no trainable parameters (the loss could not move); check {name}.lora")
    model = objective.wrap(model)
    model, optimizer, scheduler = prepare(run, model, cfg, len(objective.lengths))
    log = logging.getLogger(name)  # lines read "dpo: epoch 3: ..."
    log.info("%d items, %d epochs; an optimizer step sees %d = %d per device x %d process(es) x %d accumulation "
             "step(s); precision %s%s", len(objective.lengths), cfg["epochs"], run.global_batch(cfg["batch_size"]),
             cfg["batch_size"], run.world, run.accumulation, cfg["precision"],
             ", activation checkpointing" if cfg["gradient_checkpointing"] else "")
    history, start_epoch, start_step, resumed = [], 1, 0, {}
    position = run.checkpoints.load() if run.checkpoints else None
    if position:
        history, start_epoch, start_step = position["history"], position["epoch"], position["step"]
        # The epoch's statistics so far, summed over ranks: rank 0 carries them, the others start from zero.
        resumed = {k: v if run.is_main else 0.0 for k, v in position["totals"].items()}
        log.info("resuming from checkpoint %s: epoch %d, after step %d of it", run.checkpoints.latest,
                 start_epoch, start_step)
    every = run.checkpoints.every_steps if run.checkpoints else 0

    def checkpoint(epoch: int, step: int, totals: dict) -> None:
        if run.checkpoints:
            run.checkpoints.save({"epoch": epoch, "step": step, "totals": totals, "history": history}, run.lives)

    for epoch in range(start_epoch, cfg["epochs"] + 1):
        model.train()
        totals: dict[str, float] = resumed if epoch == start_epoch else {}
        batches = batch_order(objective.lengths, run.global_batch(cfg["batch_size"]), seed + epoch)
        done = start_step if epoch == start_epoch else 0  # batches of this epoch already trained on
        for k, batch in enumerate(tqdm(batches[done:], desc=f"{name} epoch {epoch}", leave=False,
                                       disable=None if run.is_main else True), start=done + 1):
            lr = scheduler.get_last_lr()[0]
            stats, grad_norm = train_step(run, model, optimizer, scheduler, objective, batch, cfg["max_grad_norm"])
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            if step_live is not None:
                log_metrics(step_live, objective.means(run.sum(stats)))
                log_metrics(step_live, {"grad_norm": grad_norm})
                step_live.log_metric("lr", lr)  # unrounded: a decayed lr can be far below 1e-6
                step_live.next_step()
            if every and k % every == 0 and k < len(batches):
                checkpoint(epoch, k, run.sum(totals))
        totals = run.sum(totals)
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


def live_name(metric: str) -> str:
    """An epoch metric's DVCLive name: the split as a folder (train_loss -> train/loss, heldout_loss ->
    heldout/loss), the same in every stage, so plots and `dvc plots diff` read every stage alike."""
    for split in ("train", "heldout"):
        if metric.startswith(f"{split}_"):
            return f"{split}/{metric[len(split) + 1:]}"
    return metric


def live_logger(directory: str, resume: bool = False):
    """A DVCLive logger that writes metrics.json and plots/*.tsv under `directory` and nothing else:
    no dvc.yaml of its own, no experiment commits, no timestamps (outputs stay a pure function of inputs)."""
    from dvclive import Live

    return Live(directory, dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False, resume=resume)


def log_metrics(live, metrics: dict, prefix: str = "") -> None:
    for name, value in metrics.items():
        if value is not None:
            live.log_metric(f"{prefix}{name}", round(float(value), 6))
