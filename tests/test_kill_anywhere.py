"""Kill anywhere: `dvc repro` is killed (SIGKILL to dvc and every process under it, as a crash or an OOM
kill would) while each stage runs, once with a DVC cache and once from an empty one. The next `dvc repro`
must complete with `dvc status` clean, git clean (the git-tracked metrics and plots byte-identical) and
exactly the dvc.lock of an uninterrupted run.

Kill points are deterministic but spread: stage start ("Running stage 'X'" in the log) plus a fraction of
the stage's duration in the uninterrupted run, fractions 0.15..0.85 shuffled over the stages with a fixed
seed, and mirrored (1 - f) in the second round, so every stage is hit once early and once late.
"""

import random
import shutil
import time

import pytest
from dvc_helpers import (STAGES, Background, assert_git_clean, copy_repo, dvc, git, output, stages_restored,
                         stages_run, status_json)

pytestmark = pytest.mark.slow

FRACTIONS = dict(zip(STAGES, random.Random(12).sample(
    [0.15 + 0.7 * i / (len(STAGES) - 1) for i in range(len(STAGES))], len(STAGES))))

# treeverse/dvc#7615, still in DVC 3.67.1: DVC rewrites .dvc/tmp/rwlock in place (truncate, then write), so a
# kill in between leaves it empty and every later command stops with this error until the file is deleted
# (safe once no DVC process runs: the file only records the running ones).
RWLOCK_CORRUPT = "Unable to read RWLock-file '.dvc/tmp/rwlock'. JSON structure is corrupted"


def fixed_corrupt_rwlock(repo, failed_output: str) -> bool:
    """If DVC failed on a corrupted rwlock, apply DVC's documented fix (delete it) and say so."""
    if RWLOCK_CORRUPT not in failed_output:
        return False
    (repo / ".dvc" / "tmp" / "rwlock").unlink()
    return True


def start_stage(repo, args: list[str], stage: str) -> tuple[Background, float, bool]:
    """Start `dvc <args>` and wait until `stage` runs; (run, seconds at which it started, rwlock fixed)."""
    fixed = False
    for _ in range(2):
        run = Background(args, repo)
        started = run.wait_for(f"Running stage '{stage}'")
        if started is not None:
            return run, started, fixed
        fixed = fixed_corrupt_rwlock(repo, run.text)
        assert fixed, f"'{stage}' never started:\n{run.text}"
    raise AssertionError(f"'{stage}' never started after deleting the rwlock:\n{run.text}")


def kill_at(run: Background, stage: str, started: float, delay: float) -> dict:
    """Kill the tree `delay` s after `stage` started; what happened, for the report."""
    time.sleep(max(0.0, started + delay - (time.monotonic() - run.started)))
    at = time.monotonic() - run.started
    killed = run.kill_tree()
    running = [s for _, line in run.lines for s in STAGES if f"Running stage '{s}'" in line]
    # in the stage's own command, or in DVC's bookkeeping around it (saving outputs, writing locks)
    phase = "command" if any(f"stages/{stage}.py" in cmd for cmd in killed or []) else "dvc"
    return {"stage": stage, "after_s": round(at - started, 2), "phase": phase,
            "landed": killed is not None and running[-1:] == [stage], "log": run.text}


def assert_recovered(repo, lock: str, killed: dict) -> dict:
    start = time.monotonic()
    repro = dvc("repro", cwd=repo, check=False)
    fixed = repro.returncode != 0 and fixed_corrupt_rwlock(repo, repro.stderr)
    if fixed:
        repro = dvc("repro", cwd=repo, check=False)
    seconds = time.monotonic() - start
    assert repro.returncode == 0, f"repro after a kill in '{killed['stage']}' failed:\n{output(repro)}"
    assert (repo / "dvc.lock").read_text() == lock, f"dvc.lock differs after a kill in '{killed['stage']}'"
    assert status_json(repo) == {}
    assert_git_clean(repo)  # metrics/*.json, samples.csv, plots: rewritten byte for byte, no *.tmp left
    return {"recovery_s": round(seconds, 1), "ran": sorted(stages_run(repro)),
            "restored": sorted(stages_restored(repro)), "rwlock_fix": fixed, "recovery_log": output(repro)}


def report(title: str, rows: list[dict], seconds: dict[str, float]) -> None:
    print(f"\n{title}\n  stage seconds in the uninterrupted run: {seconds}")
    for row in rows:
        print(f"  {row['stage']:<9} killed {row['after_s']:5.1f} s into the stage (in its {row['phase']}); "
              f"next repro {row['recovery_s']:5.1f} s, ran {row['ran']}, restored {row['restored']}"
              + ("; needed the rwlock deleted (dvc#7615)" if row["rwlock_fix"] else ""))
    print(f"  survived {len(rows)}/{len(rows)} kills, {sum(r['rwlock_fix'] for r in rows)} of them after "
          "deleting a corrupted .dvc/tmp/rwlock")


def test_kill_each_stage_with_cache(tiny_run, tmp_path):
    """Each stage forced to run (`dvc repro --force --single-item X`) and killed inside; the cache and
    run-cache hold the uninterrupted run, so the next `dvc repro` restores rather than recomputes."""
    repo = copy_repo(tiny_run.repo, tmp_path / "repo")
    rows = []
    for stage in STAGES:
        delay = FRACTIONS[stage] * tiny_run.stage_seconds[stage]
        for _ in range(3):  # a stage that ran faster than in the reference run: kill earlier (bounded)
            run, started, _ = start_stage(repo, ["repro", "--force", "--single-item", stage], stage)
            killed = kill_at(run, stage, started, delay)
            if killed["landed"]:
                break
            dvc("repro", cwd=repo)
            delay /= 2
        assert killed["landed"], f"could not kill '{stage}' while it ran:\n{killed['log']}"
        row = {**killed, **assert_recovered(repo, tiny_run.lock, killed)}
        # DVC restores the killed stage's outputs from its cache instead of running the command again
        # (nothing to restore when the kill came before DVC removed them); evaluate keeps non-metric
        # outputs in git (cache: false), so DVC never caches it: it reruns.
        assert row["ran"] == (["evaluate"] if stage == "evaluate" else []), row["recovery_log"]
        assert set(row["restored"]) <= {stage}, row["recovery_log"]
        rows.append(row)
    report("kills with a cache (stage, kill point, recovery):", rows, tiny_run.stage_seconds)


def test_kill_each_stage_from_empty_cache(tiny_run, tmp_path):
    """A fresh clone with nothing computed (no cache, no run-cache, no outputs; the git-tracked metrics
    deleted too) runs `dvc repro`; it is killed inside each stage in turn, each next `dvc repro` resuming
    it. The last one completes with the uninterrupted run's lock and byte-identical git-tracked outputs."""
    repo = tmp_path / "clone"
    git("clone", "-q", str(tiny_run.repo), str(repo), cwd=tmp_path)
    assert not (repo / ".dvc" / "cache").exists()
    shutil.rmtree(repo / "metrics")  # prepare's and evaluate's git-tracked outputs: all of it recomputed
    rows, previous = [], None
    for stage in STAGES:
        delay = (1 - FRACTIONS[stage]) * tiny_run.stage_seconds[stage]
        run, started, fixed = start_stage(repo, ["repro"], stage)
        if rows:  # the previous kill's recovery: this run redoing that stage until this one started
            rows[-1].update(rwlock_fix=fixed, recovery_s=round(started, 1))
        killed = kill_at(run, stage, started, delay)
        assert killed["landed"], f"the kill missed '{stage}':\n{killed['log']}"
        # stages finished before a kill stay done: this run redid only the one killed last time
        # (or none, when the kill came after DVC had recorded it)
        ran = [s for s in STAGES if f"Running stage '{s}'" in killed["log"]]
        assert ran in ([stage], [previous, stage]), killed["log"]
        rows.append({**killed, "recovery_s": 0.0, "ran": ran, "restored": [], "rwlock_fix": False})
        previous = stage
    rows[-1].update(assert_recovered(repo, tiny_run.lock, rows[-1]))
    assert rows[-1]["ran"] == ["evaluate"], rows[-1]["recovery_log"]
    report("kills from an empty cache, each next repro resuming (stage, kill point, stages run):", rows,
           tiny_run.stage_seconds)
