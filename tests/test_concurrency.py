"""Concurrency: two `dvc repro` in one workspace (the second fails fast with DVC's lock message, the first
is unharmed), and two clones sharing one cache directory running the same new experiment at once (both
complete, with the same dvc.lock, and every object in the shared cache hashes to its name)."""

import shutil
import time

import pytest
import yaml
from dvc_helpers import (ENV, STAGES, Background, assert_clean, cache_problems, copy_repo, dvc, edit_params, git,
                         output, status_json)

pytestmark = pytest.mark.slow

# What DVC says when another dvc holds the workspace: the repo lock (taken between stages, ~3 s of retries),
# or, while a stage's command runs, the per-path rwlock naming the other process.
LOCK_MESSAGES = ("Unable to acquire lock. Most likely another DVC process is running", "is busy, it is being")


def test_second_repro_in_one_workspace_fails_fast(tiny_run, tmp_path):
    repo = copy_repo(tiny_run.repo, tmp_path / "repo")
    first = Background(["repro", "--force", "--single-item", "evaluate"], repo)
    try:
        assert first.wait_for("Running stage 'evaluate'") is not None, first.text
        start = time.monotonic()
        second = dvc("repro", cwd=repo, check=False)
        seconds = time.monotonic() - start
        still_running = first.proc.poll() is None
    finally:
        rc = first.finish()
    assert second.returncode != 0, output(second)
    assert any(m in second.stderr for m in LOCK_MESSAGES), output(second)
    assert still_running, "the second repro waited for the first instead of failing"  # "fast": it did not block
    print(f"\nsecond `dvc repro` failed after {seconds:.1f} s with:\n{second.stderr.strip()}")
    # the first one finishes as if alone
    assert rc == 0, first.text
    assert (repo / "dvc.lock").read_text() == tiny_run.lock
    assert_clean(repo)


def uncached_outputs(repo) -> set[str]:
    """Outputs dvc.yaml keeps in git (`cache: false`): their hashes are in dvc.lock, never in the cache."""
    paths = set()
    for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            if isinstance(entry, dict):
                paths |= {path for path, options in entry.items() if options.get("cache") is False}
    return paths


def missing_objects(cache, repo) -> list[str]:
    """Cached outputs recorded in repo's dvc.lock whose objects (a directory's files too) are not in cache."""
    missing, uncached = [], uncached_outputs(repo)
    for stage in yaml.safe_load((repo / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            md5 = out["md5"]
            obj = cache / "files" / "md5" / md5[:2] / md5[2:]
            if out["path"] in uncached:
                continue
            if not obj.exists():
                missing.append(f"{out['path']} {md5}")
                continue
            if md5.endswith(".dir"):
                for entry in yaml.safe_load(obj.read_text()):
                    f = cache / "files" / "md5" / entry["md5"][:2] / entry["md5"][2:]
                    if not f.exists():
                        missing.append(f"{out['path']}/{entry['relpath']} {entry['md5']}")
    return missing


def test_two_clones_sharing_a_cache_at_once(tiny_run, tmp_path):
    shared = tmp_path / "shared-cache"
    shutil.copytree(tiny_run.repo / ".dvc" / "cache", shared)  # a team cache that already holds the tiny run
    clones = []
    for name in ("alice", "bob"):
        repo = tmp_path / name
        git("clone", "-q", str(tiny_run.repo), str(repo), cwd=tmp_path)
        dvc("cache", "dir", "--local", str(shared), cwd=repo)
        edit_params(repo, dpo={"beta": 0.3})  # the same new experiment, run by both at the same moment
        clones.append(repo)
    start = time.monotonic()
    # Each stage holds a core per thread (cores.py), so where the cores are too few one clone's stage waits for
    # the other's: the two dvc processes still run at once, and their cache writes interleave.
    runs = [Background(["repro"], repo) for repo in clones]
    codes = [run.finish() for run in runs]
    seconds = time.monotonic() - start
    for repo, run, code in zip(clones, runs, codes):
        assert code == 0, run.text
        # upstream restored from the shared cache; dpo and evaluate computed in both
        ran = {s for s in STAGES if f"Running stage '{s}'" in run.text}
        assert {"dpo", "evaluate"} <= ran, run.text
        assert status_json(repo) == {}
    locks = [(repo / "dvc.lock").read_text() for repo in clones]
    assert locks[0] == locks[1]
    assert cache_problems(shared) == []
    assert missing_objects(shared, clones[0]) == []
    print(f"\ntwo clones, one cache, at once: both completed in {seconds:.1f} s, identical dvc.lock, "
          f"{sum(1 for p in (shared / 'files').rglob('*') if p.is_file())} objects all matching their md5")
