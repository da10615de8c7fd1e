"""Where and how models run: the device, the precision (autocast) and the seed."""

from __future__ import annotations

import functools
import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels: same inputs, same machine -> same bytes in models/ and metrics/.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def check_precision(device_type: str, precision: str) -> None:
    """Warn, once, about bf16 on a CPU that has no bf16 instructions (AVX512-BF16 or AMX): there PyTorch emulates
    it, and a bf16 matmul measured ~90x slower than fp32 on this project's 2-core AVX2 machines."""
    if device_type != "cpu" or precision != "bf16" or not os.path.exists("/proc/cpuinfo"):
        return
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        log.warning("precision bf16 on a CPU without bf16 instructions (no avx512_bf16/amx_bf16 in /proc/cpuinfo): "
                    "PyTorch emulates it, many times slower than fp32; use precision: fp32 here")


def autocast(device, precision: str):
    """The training stages' mixed precision for forward-only work: autocast to bf16/fp16, or nothing for fp32.
    Log-probs stay fp32 (logprobs.py casts the logits)."""
    device = torch.device(device)
    check_precision(device.type, precision)
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision in AUTOCAST_DTYPES)


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
