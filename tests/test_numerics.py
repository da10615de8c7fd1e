"""Portable CPU numerics (stages/preftune/pipeline/numerics.py) and sharing the cores by waiting (stages/preftune/pipeline/cores.py).

In portable mode a stage's bits depend on its code, data and params only: not on the cores it may use (taskset),
the environment's thread and ISA settings, or another stage running beside it. Native mode takes the machine's and
the environment's choices, so another ISA gives other bits. One machine cannot be an Intel and an AMD CPU at once;
the tests stand in for the other machine by capping torch's kernels below this one's (ATEN_CPU_CAPABILITY=default)
and by running on one core. That the committed dvc.lock comes back from a fresh clone is
test_committed_lock.py's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from dvc_helpers import ENV, ROOT, Background, copy_repo, dvc, edit_params, lock_outs, output

PYTHON = sys.executable
# What another machine or a careless shell may hand a stage: one thread, scalar kernels, MKL's own dispatch.
HOSTILE = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AUTO",
           "MKL_DYNAMIC": "TRUE"}


def has_avx2() -> bool:
    sys.path.insert(0, str(ROOT / "stages"))
    from preftune.pipeline.numerics import lacks_portable_isa

    return lacks_portable_isa() is None


needs_avx2 = pytest.mark.skipif(not has_avx2(), reason="portable numerics need an x86-64 CPU with AVX2 and FMA")


def run_python(code: str, env: dict | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "stages"), **(env or {})}
    return subprocess.run([PYTHON, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


PINNED_FACTS = """
    import json, os, sys
    from preftune.pipeline import numerics
    pinned = numerics.pin(sys.argv[1:] + ["--params", {params!r}])
    import torch
    line, warnings = numerics.describe(pinned.mode)
    print(json.dumps({{"threads": torch.get_num_threads(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "mkl_cbwr": os.environ.get("MKL_CBWR"), "replaced": sorted(pinned.replaced),
                      "line": line, "warnings": warnings}}))
"""


def pinned_facts(tmp_path, numerics: str, threads: int, env: dict) -> dict:
    params = tmp_path / f"params-{numerics}.yaml"
    params.write_text(f"numerics: {numerics}\nthreads: {threads}\n")
    proc = run_python(PINNED_FACTS.format(params=str(params)), env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_avx2
def test_portable_pins_threads_and_kernels_whatever_the_environment_says(tmp_path):
    facts = pinned_facts(tmp_path, "portable", 3, HOSTILE)
    assert facts["threads"] == 3 and facts["capability"] == "AVX2" and facts["mkl_cbwr"] == "COMPATIBLE"
    assert facts["replaced"] == sorted(HOSTILE)
    assert facts["line"].startswith("numerics: portable (AVX2 kernels, MKL COMPATIBLE, 3 threads) on ")
    assert any(w.startswith("OMP_NUM_THREADS=1 from the environment replaced by 3") for w in facts["warnings"])
    # a rank of two on its node takes half the threads, so the node's cores are not oversubscribed
    assert pinned_facts(tmp_path, "portable", 3, {**HOSTILE, "LOCAL_WORLD_SIZE": "2"})["threads"] == 1


def test_native_keeps_what_the_machine_and_environment_choose(tmp_path):
    facts = pinned_facts(tmp_path, "native", 3, HOSTILE)
    assert facts["threads"] == 1 and facts["capability"] == "DEFAULT" and facts["mkl_cbwr"] == "AUTO"
    assert facts["replaced"] == [] and facts["warnings"] == []
    assert facts["line"].startswith("numerics: native (the machine's kernels, 1 thread) on ")


def test_pinning_after_torch_loaded_is_refused(tmp_path):
    proc = run_python("""
        import torch
        from preftune.pipeline import numerics
        numerics.pin([])
    """)
    assert proc.returncode != 0 and "numerics.pin() ran after torch was imported" in proc.stderr
    # and a stage whose params ask for another mode than the one pinned cannot start
    (tmp_path / "params.yaml").write_text("numerics: native\n")
    proc = run_python(PINNED_FACTS.format(params=str(tmp_path / "params.yaml")).replace(
        "numerics.describe(pinned.mode)", "numerics.describe('portable')"))
    assert proc.returncode != 0 and "numerics 'portable' was not pinned" in proc.stderr


# --- cores.py: waiting for cores ----------------------------------------------------------------------------

HOLDER = """
    import sys, time
    from preftune.pipeline import cores
    waited = cores.hold(int(sys.argv[1]), waiting=lambda m: print(m, flush=True))
    print(f"holding after {waited:.1f} s", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def start_holder(tmp_path, threads: int, sleep_s: float, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "stages"), "TMPDIR": str(tmp_path), **(env or {})}
    return subprocess.Popen([PYTHON, "-c", textwrap.dedent(HOLDER), str(threads), str(sleep_s)], env=env,
                            stdout=subprocess.PIPE, text=True)


def test_a_stage_waits_for_cores_another_holds_and_a_killed_holder_frees_them(tmp_path):
    cpus = os.cpu_count() or 1
    first = start_holder(tmp_path, cpus, 600)
    try:
        assert first.stdout.readline().startswith("holding after")
        second = start_holder(tmp_path, 1, 0)
        line = second.stdout.readline()
        assert line.startswith(f"waiting for 1 free core (other stages on this machine hold {cpus} of {cpus})"), line
        time.sleep(1.5)
        assert second.poll() is None  # still waiting: the cores are held
        # a rank under a launcher does not wait (its job's other ranks may hold the cores it would wait for)
        rank = start_holder(tmp_path, 1, 0, {"WORLD_SIZE": "2"})
        assert rank.stdout.readline().startswith("holding after 0.0 s")
        rank.wait(timeout=30)
        first.send_signal(signal.SIGKILL)  # killed, not exited: the kernel drops its locks
        first.wait(timeout=30)
        released = time.monotonic()
        assert second.stdout.readline().startswith("holding after")
        assert time.monotonic() - released < 5
        assert second.wait(timeout=30) == 0
    finally:
        first.kill()


# --- stages through dvc: the same bytes ----------------------------------------------------------------------

def sft_outs(repo, env: dict | None = None, taskset: str | None = None) -> tuple[dict, str]:
    """`dvc repro --force --single-item sft` in repo; the sft outputs' hashes in dvc.lock and the log."""
    args = ["repro", "--force", "--single-item", "sft"]
    cmd = ["taskset", "-c", taskset, shutil.which("dvc", path=ENV["PATH"]), *args] if taskset else None
    if cmd:
        proc = subprocess.run(cmd, cwd=repo, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, output(proc)
    else:
        proc = dvc(*args, cwd=repo, env={**ENV, **(env or {})})
    return lock_outs((repo / "dvc.lock").read_text(), "sft"), output(proc)


@pytest.mark.slow
@needs_avx2
def test_portable_sft_is_the_same_bytes_on_one_core_in_a_hostile_environment(tiny_run, tmp_path):
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and 2 cores")
    repo = copy_repo(tiny_run.repo, tmp_path / "repo")
    alone = lock_outs(tiny_run.lock, "sft")  # 2 cores, the test's own environment
    outs, log = sft_outs(repo, HOSTILE, taskset="0")
    assert outs == alone, log
    assert "OMP_NUM_THREADS=1 from the environment replaced by 2" in log
    assert "numerics: portable (AVX2 kernels, MKL COMPATIBLE, 2 threads)" in log


@pytest.mark.slow
@needs_avx2
def test_portable_sft_beside_another_stage_waits_and_gives_the_same_bytes(tiny_run, tmp_path):
    repos = [copy_repo(tiny_run.repo, tmp_path / name) for name in ("one", "two")]
    runs = [Background(["repro", "--force", "--single-item", "sft"], repo) for repo in repos]
    codes = [run.finish() for run in runs]
    assert codes == [0, 0], [run.text for run in runs]
    for repo in repos:
        assert lock_outs((repo / "dvc.lock").read_text(), "sft") == lock_outs(tiny_run.lock, "sft")
    if (os.cpu_count() or 1) <= 2:  # 2 threads each on 2 CPUs: one of them waited for the other
        assert sum("waiting for 2 free cores" in run.text for run in runs) == 1, [run.text for run in runs]


@pytest.mark.slow
def test_native_sft_bits_follow_the_machines_kernels(tiny_run, tmp_path):
    """What portable mode prevents: in native mode the kernels torch picks change the bytes (here scalar ones
    instead of this machine's vector ones, as an older CPU or an AVX-512 one picks others)."""
    repo = copy_repo(tiny_run.repo, tmp_path / "repo")
    edit_params(repo, numerics="native")
    machine, log = sft_outs(repo)
    assert "numerics: native (the machine's kernels" in log
    capped, _ = sft_outs(repo, {"ATEN_CPU_CAPABILITY": "default"})
    assert capped != machine


def test_the_numerics_line_waits_for_the_stages_first_line():
    """Bad input stops a stage with one line: what it runs on is written with its first line of its own, if any."""
    code = """
        import logging, sys
        from preftune.pipeline.params import _say_with_the_first_line
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        log = logging.getLogger("dpo")
        _say_with_the_first_line(log, [(logging.INFO, "numerics: portable"), (logging.WARNING, "replaced")])
        if sys.argv[1:] == ["error"]:
            sys.exit("dpo: error: bad input")
        log.info("training")
        log.info("done")
    """
    quiet = subprocess.run([PYTHON, "-c", textwrap.dedent(code), "error"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT / "stages")})
    assert quiet.stderr.splitlines() == ["dpo: error: bad input"]
    said = run_python(code)
    assert said.stderr.splitlines() == ["dpo: numerics: portable", "dpo: replaced", "dpo: training", "dpo: done"]
