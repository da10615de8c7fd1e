"""The real `dvc` and `git` CLIs on a tiny pipeline configuration in temporary clones of this repository.

One home for what the end-to-end, fault (kills, remotes) and concurrency tests share: the TINY params,
the environment the CLIs run in, `dvc()` / `git()` wrappers, status and lock helpers, a tiny clone,
a background `dvc repro` that can be killed at a chosen moment, and the servers-or-skip rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DVC = str(VENV_BIN / "dvc")
STAGES = ["prepare", "sft", "reward", "reference", "dpo", "generate", "judge", "evaluate"]
EVALUATION = {"generate", "judge", "evaluate"}  # what reruns after a new DPO model
IDENTITY = {"name": "preftune e2e", "email": "e2e@example.invalid"}

TINY = {
    "data": {"pairs": 40, "heldout": 10, "sft_demos": 200, "gold_prompts": 40, "validation_prompts": 20,
             "judge_pairs": 40},
    "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 400},
    "sft": {"epochs": 2, "batch_size": 32},
    "reward": {"epochs": 2, "agreement_prompts": 10, "agreement_samples": 2},
    # beta pinned: the tests move it 0.1 -> 0.2 and back. lr: 4 steps an epoch must move the policy past the metrics'
    # 6-decimal rounding, or a beta change cannot show in `dvc metrics diff` (at 7e-5, train.implicit_r_w did not)
    "dpo": {"epochs": 2, "beta": 0.1, "lr": 0.001},
    "evaluate": {"kl_samples": 1},
}

ENV = {
    **os.environ,
    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` in stage cmds = the venv's
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    # `dvc exp run` commits through its own git library: give it an identity too.
    "GIT_AUTHOR_NAME": IDENTITY["name"],
    "GIT_AUTHOR_EMAIL": IDENTITY["email"],
    "GIT_COMMITTER_NAME": IDENTITY["name"],
    "GIT_COMMITTER_EMAIL": IDENTITY["email"],
}
ENV.pop("SSH_AUTH_SOCK", None)  # the SSH remote tests authenticate with their own key only

IN_CI = os.environ.get("CI", "").lower() == "true"


def _run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(cmd)}` in {cwd} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def dvc(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return _run([DVC, *args], cwd, check, env)


def git(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run(["git", "-c", f"user.name={IDENTITY['name']}", "-c", f"user.email={IDENTITY['email']}",
                 *args], cwd, check)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def stages_run(proc: subprocess.CompletedProcess) -> set[str]:
    """Stages whose command `dvc repro` / `dvc exp run` executed."""
    text = proc.stdout + proc.stderr
    return {s for s in STAGES if f"Running stage '{s}'" in text}


def stages_restored(proc: subprocess.CompletedProcess) -> set[str]:
    """Stages `dvc repro` restored from the run-cache (or the lock) instead of running them."""
    text = proc.stdout + proc.stderr
    return {s for s in STAGES if f"Stage '{s}' is cached - skipping run" in text}


def status_json(cwd: Path) -> dict:
    proc = dvc("status", "--json", cwd=cwd)
    return json.loads(proc.stdout)


def edit_params(repo: Path, **changes) -> None:
    """edit_params(repo, dpo={"beta": 0.2}) updates the given keys of params.yaml, keeping the order;
    edit_params(repo, sharding="fsdp2") sets a top-level key."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def assert_git_clean(repo: Path) -> None:
    porcelain = git("status", "--porcelain", cwd=repo).stdout
    assert porcelain == "", f"git working tree not clean in {repo}:\n{porcelain}"


def assert_clean(repo: Path) -> None:
    """Nothing for `dvc repro` to do and nothing for git to commit."""
    assert status_json(repo) == {}
    assert_git_clean(repo)


def lock_outs(lock_text: str, stage: str) -> dict[str, str]:
    return {out["path"]: out["md5"] for out in yaml.safe_load(lock_text)["stages"][stage]["outs"]}


def clone_working_tree(dest: Path) -> Path:
    """A git clone of this repository carrying the working tree as it is on disk: tracked files with their
    uncommitted edits, new files git does not ignore, and deletions, committed in the clone. So the end-to-end
    tests test the code being written, not the last commit."""
    git("clone", "-q", str(ROOT), str(dest), cwd=dest.parent)
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, dest / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif not source.exists() and target.is_file():
            target.unlink()
    git("add", "-A", cwd=dest)
    if git("status", "--porcelain", cwd=dest).stdout:
        git("commit", "-q", "-m", "the working tree's changes", cwd=dest)
    return dest


def tiny_clone(dest: Path, remote: Path | None = None) -> Path:
    """A clone of this repository's working tree (clone_working_tree) with the TINY params committed (and
    `remote` as the default DVC remote, committed in .dvc/config, when given). Nothing has run in it yet."""
    clone_working_tree(dest)
    params = read_params(dest)
    for section, values in TINY.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    message = "tiny params"
    if remote is not None:
        dvc("remote", "add", "-d", "store", str(remote), cwd=dest)
        message += ", local remote"
    git("add", "params.yaml", ".dvc/config", cwd=dest)
    git("commit", "-q", "-m", message, cwd=dest)
    return dest


def copy_repo(src: Path, dest: Path) -> Path:
    """An independent copy of a workspace: git history, DVC cache and run-cache, outputs (not .dvc/tmp)."""
    shutil.copytree(src, dest, symlinks=True, ignore=_skip_dvc_tmp)
    return dest


def _skip_dvc_tmp(folder: str, names: list[str]) -> list[str]:
    return ["tmp"] if Path(folder).name == ".dvc" else []


class Background:
    """`dvc <args>` in the background, its merged stdout/stderr collected line by line with arrival times,
    so a test can wait for a log line and kill the whole process tree at a chosen moment."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([DVC, *args], cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, needle: str, after: str | None = None, timeout: float = 600) -> float | None:
        """Seconds since start at which a line containing `needle` arrived (only lines after the first one
        containing `after`, when given); None if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = self.proc.poll() is not None
            if ended:
                self._reader.join(timeout=5)
            lines = list(self.lines)
            if after is not None:
                start = next((i for i, (_, line) in enumerate(lines) if after in line), len(lines))
                lines = lines[start + 1:]
            found = next((at for at, line in lines if needle in line), None)
            if found is not None or ended:
                return found
            time.sleep(0.01)
        raise AssertionError(f"no line with {needle!r} within {timeout} s:\n{self.text}")

    def kill_tree(self) -> list[str] | None:
        """SIGKILL dvc and every process under it at once (a crash, an OOM kill, a pulled plug).
        Returns the command lines killed, or None if dvc had already exited."""
        try:
            parent = psutil.Process(self.proc.pid)
            procs = [parent, *parent.children(recursive=True)]
            cmdlines = [" ".join(p.cmdline()) for p in procs]
        except psutil.NoSuchProcess:
            procs, cmdlines = [], []
        alive = self.proc.poll() is None
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        return cmdlines if alive else None

    def finish(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc


def cache_problems(cache: Path) -> list[str]:
    """Objects in a DVC 3 cache whose content does not hash to their name (files/md5/ab/cdef...),
    and run-cache records that are not valid YAML. Empty when the cache is consistent."""
    problems = []
    objects = cache / "files" / "md5"
    for path in sorted(objects.rglob("*")) if objects.is_dir() else []:
        if path.is_file():
            name = path.parent.name + path.name
            digest = hashlib.md5(path.read_bytes()).hexdigest()
            if name.removesuffix(".dir") != digest:
                problems.append(f"{path}: content md5 {digest}")
            if name.endswith(".dir"):
                try:
                    json.loads(path.read_text())
                except ValueError as exc:
                    problems.append(f"{path}: not a JSON listing ({exc})")
        elif path.is_dir() and path.parent != objects:
            problems.append(f"{path}: unexpected folder")
    runs = cache / "runs"
    for path in sorted(runs.rglob("*")) if runs.is_dir() else []:
        if path.is_file():
            try:
                assert isinstance(yaml.safe_load(path.read_text()), dict)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
                problems.append(f"{path}: not a run record ({exc!r})")
    return problems


def tree_digest(root: Path, skip: tuple[str, ...] = (".git",)) -> dict[str, str]:
    """md5 of every file under root (relative path -> md5), to prove a failed command changed nothing."""
    digests = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in skip or (len(rel.parts) > 1 and rel.parts[:2] == (".dvc", "tmp")):
            continue
        if path.is_file() and not path.is_symlink():
            digests[str(rel)] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening at the moment of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode} before listening on 127.0.0.1:{port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def require(condition: bool, reason: str) -> None:
    """Skip when a server binary is missing on a developer machine; fail in CI (CI=true), which installs them."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: .ci/run should have installed it)")
        pytest.skip(reason)
