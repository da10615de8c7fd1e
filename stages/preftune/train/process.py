"""This process's place in a launch (one process, or a rank of torchrun / accelerate launch), the Accelerator that
carries it, and what a micro-batch's backward, the gradient clip and a sum over ranks are under each engine: DDP and
DeepSpeed ZeRO through accelerate, or PyTorch's FSDP2 (sharding.py)."""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

from ..model.runtime import check_precision, resolve_device
from ..pipeline.errors import ConfigError
from . import sharding

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # params.yaml's names -> accelerate's


class Process:
    """Create it before loading a model: it sets up the process group. `cfg` is the stage's params section
    (precision, gradient_accumulation_steps); `shard` is params' `sharding` (the model's layout over ranks)."""

    def __init__(self, device: str, cfg: dict, shard: str = "none"):
        resolved = resolve_device(device)
        sharding.before_accelerate(resolved.type)
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        if cfg["precision"] == "fp16" and resolved.type == "cpu":
            raise ConfigError("params.yaml: precision fp16 needs a GPU (CPU autocast is bf16 only); use bf16 or fp32")
        check_precision(resolved.type, cfg["precision"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:  # one process may build several (tests, benchmarks)
            AcceleratorState._reset_state()
        sharding.refuse_accelerate_config()
        self.sharding = sharding.effective(shard, world)
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

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum each statistic over ranks (every rank must call this with the same keys)."""
        if self.world == 1:
            return dict(values)
        keys = sorted(values)
        total = self.accelerator.reduce(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                                                     device=self.device), "sum")
        return dict(zip(keys, total.tolist()))
