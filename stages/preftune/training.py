"""Pieces every training loop shares: the optimizer, the learning-rate schedule, device moves, and
DVCLive loggers that write plain files (the plots are declared in the main dvc.yaml)."""

from __future__ import annotations

import math

import torch


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay)


def warmup_cosine(optimizer, total_steps: int, warmup_steps: int, schedule: str = "cosine"):
    """Linear warm-up, then cosine decay to 10% (or constant: the seed's DPO uses a fixed lr)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def live_logger(directory: str):
    """A DVCLive logger that writes metrics.json and plots/*.tsv under `directory` and nothing else:
    no dvc.yaml of its own, no experiment commits, no timestamps (outputs stay a pure function of inputs)."""
    from dvclive import Live

    return Live(directory, dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False)


def log_metrics(live, metrics: dict, prefix: str = "") -> None:
    for name, value in metrics.items():
        if value is not None:
            live.log_metric(f"{prefix}{name}", round(float(value), 6))
