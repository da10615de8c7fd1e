"""CPU numerics: the same bits on any x86-64 CPU (`numerics: portable`, the default) or this machine's full speed
(`numerics: native`).

Why: a float result depends on the order of its operations, and the CPU libraries choose that order from the
machine. torch's vectorised kernels (softmax, norms, exp, reductions) run at the widest ISA the CPU has (AVX-512
sums in other lanes than AVX2); MKL's matmul picks vendor- and ISA-specific kernels; a parallel loop splits its
work by the thread count. The same code and params then trained other weights on an Intel Xeon than on an AMD
EPYC (the committed dvc.lock was not reproduced from models/sft on), and a colleague could not tell a real change
from a CPU.

portable pins every such choice to one that every x86-64-v3 CPU (AVX2 and FMA: Intel since 2013, AMD since
2015) makes alike:
    ATEN_CPU_CAPABILITY=avx2        torch's own kernels at AVX2 width, also on AVX-512 machines
    ONEDNN_MAX_CPU_ISA=AVX2         oneDNN's JIT kernels likewise
    MKL_CBWR=COMPATIBLE             MKL's one vendor-neutral code path (MKL_CBWR=AVX2 is AUTO on AMD)
    OMP_/MKL_NUM_THREADS=threads    the params' `threads`, whatever the cores or the environment say; a busy
                                    machine is shared by waiting for cores (cores.py), never by fewer threads
    MKL_DYNAMIC=OMP_DYNAMIC=FALSE   and exactly that many are used
    NPY_DISABLE_CPU_FEATURES, OPENBLAS_CORETYPE=Haswell, OPENBLAS_NUM_THREADS=1
                                    numpy's loops (exp, sums) and scipy's BLAS (the LC win rate's fit) at AVX2,
                                    on one thread
What it costs is measured in the README (MKL's compatible path multiplies fp32 matrices at about a quarter of the
speed of its native one). Under a launcher each rank takes threads // ranks on its node (torchrun's LOCAL_WORLD_SIZE),
so the bits hold for the same world size and launcher. They do not hold across GPUs, another torch, or native.

The libraries read these settings once, when they load or at their first kernel, so a stage pins them before
torch is imported: `numerics.pin()` is every stage script's first statement (under `if __name__ == "__main__"`, so
that a test may import a function from a stage script), and params.start_stage then checks and logs what was
pinned (`describe`). This module imports neither torch nor numpy.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from dataclasses import dataclass, field

import yaml

MODES = ("portable", "native")
# The stages whose outputs are computed with torch: their dvc.yaml params include numerics and threads (so switching
# either reruns them; tests/test_dvc_yaml.py), and they log what they computed on. prepare tokenizes only.
COMPUTING_STAGES = ("sft", "reward", "reference", "dpo", "online", "generate", "judge", "evaluate",
                    "evaluate_round")
DEFAULT_MODE, DEFAULT_THREADS = "portable", 2
NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"  # numpy 2's dispatch groups above AVX2 (X86_V3)


@dataclass
class Pinned:
    mode: str
    threads: int  # this process's torch threads (portable: threads // ranks on this node; native: torch's)
    replaced: dict[str, str] = field(default_factory=dict)  # variables the environment set that portable overrode


PINNED: Pinned | None = None  # set by pin(); None in a process that never pinned (tests, library users)


def portable_environment(threads: int) -> dict[str, str]:
    """The variables portable mode sets, for a process that runs `threads` torch threads."""
    return {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "COMPATIBLE",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MKL_DYNAMIC": "FALSE",
        "OMP_DYNAMIC": "FALSE",
        "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512,
        "OPENBLAS_CORETYPE": "Haswell",
        "OPENBLAS_NUM_THREADS": "1",
    }


def requested(argv: list[str]) -> tuple[str, int]:
    """The mode and thread count the params file on this command line (--params, default params.yaml) asks for.
    A missing or malformed value gives the default here: schema.check stops the stage on it a moment later."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    path = parser.parse_known_args(argv)[0].params
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        params = None
    params = params if isinstance(params, dict) else {}
    mode = params.get("numerics", DEFAULT_MODE)
    threads = params.get("threads", DEFAULT_THREADS)
    if mode not in MODES:
        mode = DEFAULT_MODE
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        threads = DEFAULT_THREADS
    return mode, threads


def ranks_on_this_node() -> int:
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def pin(argv: list[str] | None = None) -> Pinned:
    """Set this process's numerics from its params file, before torch loads (a stage script's first statement)."""
    global PINNED
    if PINNED is not None:  # pinned already: the environment is set
        return PINNED
    if "torch" in sys.modules:
        raise RuntimeError("numerics.pin() ran after torch was imported: make it the stage script's first statement")
    mode, threads = requested(sys.argv[1:] if argv is None else argv)
    if mode == "native":  # the machine's and the environment's own choices (torch: a thread per core)
        PINNED = Pinned("native", 0)
        return PINNED
    threads = max(1, threads // ranks_on_this_node())
    env = portable_environment(threads)
    replaced = {k: os.environ[k] for k in env if k in os.environ and os.environ[k] != env[k]}
    os.environ.update(env)
    PINNED = Pinned("portable", threads, replaced)
    return PINNED


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lacks_portable_isa() -> str | None:
    """Why portable mode cannot give the shared bits on this CPU, or None: it needs x86-64 with AVX2 and FMA."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"this is {platform.machine()}, not x86-64"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None  # cannot tell (not Linux); torch's capability in the log says what ran
    missing = [flag for flag in ("avx2", "fma") if flag not in flags]
    return f"this CPU lacks {' and '.join(missing)}" if missing else None


def describe(mode: str) -> tuple[str, list[str]]:
    """After params.yaml is checked: the log line naming what this stage computes on, and warnings. Raises if the
    process did not pin, or pinned another mode than params.yaml's (a stage script that imports torch first)."""
    import torch  # the stage has loaded it by now; this module must not load it earlier

    if PINNED is None or PINNED.mode != mode:
        raise RuntimeError(f"numerics {mode!r} was not pinned before torch loaded: call numerics.pin() first")
    warnings = []
    if mode == "portable":
        if torch.get_num_threads() != PINNED.threads:  # someone called torch.set_num_threads
            torch.set_num_threads(PINNED.threads)
        for name, value in PINNED.replaced.items():
            warnings.append(f"{name}={value} from the environment replaced by {os.environ[name]} (numerics: portable "
                            "fixes it; set numerics: native to use the environment's)")
        reason = lacks_portable_isa()
        if reason:
            warnings.append(f"numerics: portable needs an x86-64 CPU with AVX2 and FMA, and {reason}: results are "
                            "this machine's and may differ in the last bits from another's")
        settings = f"AVX2 kernels, MKL COMPATIBLE, {PINNED.threads} thread{'s' * (PINNED.threads > 1)}"
    else:
        PINNED.threads = torch.get_num_threads()
        settings = f"the machine's kernels, {PINNED.threads} thread{'s' * (PINNED.threads > 1)}"
    line = (f"numerics: {mode} ({settings}) on {cpu_model()}, torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}")
    return line, warnings
