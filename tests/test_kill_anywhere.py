"""Kill anywhere: `dvc repro` is killed (SIGKILL to dvc and every process under it, as a crash or an OOM
kill would) while each stage runs, once with a DVC cache and once from an empty one. The next `dvc repro`
must complete with `dvc status` clean, git clean (the git-tracked metrics and plots byte-identical) and
exactly the dvc.lock of an uninterrupted run.

Kill points are deterministic but spread, and anchored to lines of the stage's own log rather than to timers,
so they land inside the stage however loaded the machine is: starting up (a second after "> python ..."),
model built, mid-training ("epoch 1"), and right after the stage's last line (its command exiting while
DVC saves the outputs and writes dvc.lock). Each stage gets a different kind of point in each round.
"""

import shutil
import time

import pytest
from dvc_helpers import (STAGES, Background, assert_git_clean, copy_repo, dvc, git, output, stages_restored,
                         stages_run, status_json)

pytestmark = pytest.mark.slow

# stage -> (a line the stage logs, seconds to wait after it)
WITH_CACHE = {
    "prepare": ("> python stages/prepare.py", 0.0),
    "sft": ("sft: epoch 1", 0.0),
    "reward": ("reward: epoch 1", 0.0),
    "reference": ("> python stages/reference.py", 1.0),
    "dpo": ("dpo: policy:", 0.0),
    "generate": ("generate: heldout", 0.0),
    "judge": ("> python stages/judge.py", 1.0),
    "evaluate": ("evaluate: win rate", 0.0),
}
EMPTY_CACHE = {
    "prepare": ("prepare: ", 0.0),  # its one summary line, at the very end
    "sft": ("parameters, vocabulary", 0.0),
    "reward": ("> python stages/reward.py", 1.0),
    "reference": ("reference: reference log-probs", 0.0),
    "dpo": ("dpo: epoch 1", 0.0),
    "generate": ("generate: heldout", 0.0),
    "judge": ("> python stages/judge.py", 1.0),
    "evaluate": ("> python stages/evaluate.py", 1.0),
}

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


def start_stage(repo, args: list[str], stage: str, anchor: str) -> tuple[Background, float, bool]:
    """Start `dvc <args>`, wait until `stage` runs and logs `anchor`; (run, seconds at that line, rwlock fixed)."""
    fixed = False
    for _ in range(2):
        run = Background(args, repo)
        if run.wait_for(f"Running stage '{stage}'") is not None:
            seen = run.wait_for(anchor, after=f"Running stage '{stage}'")
            assert seen is not None, f"'{stage}' never logged {anchor!r}:\n{run.text}"
            return run, seen, fixed
        fixed = fixed_corrupt_rwlock(repo, run.text)
        assert fixed, f"'{stage}' never started:\n{run.text}"
    raise AssertionError(f"'{stage}' never started after deleting the rwlock:\n{run.text}")


def kill_at(run: Background, stage: str, anchor: str, seen: float, delay: float) -> dict:
    """Kill the tree `delay` s after the anchor line; what happened, for the report."""
    time.sleep(max(0.0, seen + delay - (time.monotonic() - run.started)))
    killed = run.kill_tree()
    running = [s for _, line in run.lines for s in STAGES if f"Running stage '{s}'" in line]
    # in the stage's own command, or in DVC's bookkeeping around it (saving outputs, writing locks)
    phase = "command" if any(f"stages/{stage}.py" in cmd for cmd in killed or []) else "dvc"
    return {"stage": stage, "point": f"{anchor!r} + {delay:.0f} s", "phase": phase,
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


def report(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    for row in rows:
        print(f"  {row['stage']:<9} killed at {row['point']:<40} (in {row['phase']:<7}); "
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
        anchor, delay = WITH_CACHE[stage]
        run, seen, _ = start_stage(repo, ["repro", "--force", "--single-item", stage], stage, anchor)
        killed = kill_at(run, stage, anchor, seen, delay)
        assert killed["landed"], f"the kill missed '{stage}' (dvc had exited):\n{killed['log']}"
        row = {**killed, **assert_recovered(repo, tiny_run.lock, killed)}
        # DVC restores the killed stage's outputs from its cache instead of running the command again
        # (nothing to restore when the kill came after the command had rewritten them); evaluate keeps
        # non-metric outputs in git (cache: false), so DVC never caches it: it reruns if they were cut short.
        assert set(row["ran"]) <= ({"evaluate"} if stage == "evaluate" else set()), row["recovery_log"]
        assert set(row["restored"]) <= {stage}, row["recovery_log"]
        rows.append(row)
    report("kills with a cache (stage, kill point, recovery):", rows)


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
        anchor, delay = EMPTY_CACHE[stage]
        run, seen, fixed = start_stage(repo, ["repro"], stage, anchor)
        if rows:  # the previous kill's recovery: this run redoing that stage until this one started
            rows[-1].update(rwlock_fix=fixed, recovery_s=round(run.wait_for(f"Running stage '{stage}'"), 1))
        killed = kill_at(run, stage, anchor, seen, delay)
        assert killed["landed"], f"the kill missed '{stage}':\n{killed['log']}"
        # stages finished before a kill stay done: this run redid at most the one killed last time
        # (none, when the kill came after DVC had recorded it)
        ran = [s for s in STAGES if f"Running stage '{s}'" in killed["log"]]
        assert ran in ([stage], [previous, stage]), killed["log"]
        rows.append({**killed, "recovery_s": 0.0, "ran": ran, "restored": [], "rwlock_fix": False})
        previous = stage
    rows[-1].update(assert_recovered(repo, tiny_run.lock, rows[-1]))
    assert rows[-1]["ran"] == ["evaluate"], rows[-1]["recovery_log"]
    report("kills from an empty cache, each next repro resuming (stage, kill point, stages the killed run ran):",
           rows)
