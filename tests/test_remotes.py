"""Team remotes on real servers started by the tests on 127.0.0.1: S3 through moto's S3-compatible server
(with IAM authentication switched on, so a wrong secret is refused) and SSH through OpenSSH's sshd.

For each: credentials live only in .dvc/config.local (never committed); push with the run-cache; a fresh
clone pulls and has nothing to run; a clone whose params match a run that only ever happened elsewhere
restores it from the remote's run-cache instead of training; a wrong credential and an unreachable remote
fail with DVC's error and change nothing locally. Skipped (failed under CI=true) without the server binaries.
"""

import getpass
import json
import os
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dvc_helpers import (ENV, EVALUATION, VENV_BIN, assert_clean, assert_git_clean, copy_repo, dvc, edit_params,
                         free_port, git, lock_outs, output, require, stages_restored, stages_run, status_json,
                         tree_digest, wait_for_port)

pytestmark = pytest.mark.slow

BUCKET = "preftune"


@dataclass
class Remote:
    name: str  # as committed in origin's .dvc/config
    good: dict[str, str]  # `dvc remote modify --local` options that work
    wrong: dict[str, str]  # the same with a wrong credential
    dead: dict[str, str]  # a remote of this kind on a port where nothing listens: url + options
    refused: str  # what DVC says to the wrong credential
    unreachable: str  # and to the dead port
    secrets: list[str] = field(default_factory=list)  # strings that must never reach git


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc)
    except AssertionError as exc:
        stop(proc)
        raise AssertionError(f"{exc}\n{log.read_text()[-2000:]}") from None
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = VENV_BIN / "moto_server"
    require(server.exists(), f"{server} missing: install the test extra (requirements.lock has it)")
    import boto3

    base = tmp_path_factory.mktemp("moto")
    port = free_port()
    proc = start([str(server), "-H", "127.0.0.1", "-p", str(port)], port, base / "moto.log")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        # moto accepts any credentials until told otherwise: create a team user with an S3 policy and the
        # bucket while it still does, then switch IAM authentication on for every later request.
        bootstrap = {"endpoint_url": endpoint, "region_name": "us-east-1",
                     "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **bootstrap)
        iam.create_user(UserName="team")
        iam.put_user_policy(UserName="team", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="team")["AccessKey"]
        boto3.client("s3", **bootstrap).create_bucket(Bucket=BUCKET)
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).read()

        good = {"endpointurl": endpoint, "access_key_id": key["AccessKeyId"],
                "secret_access_key": key["SecretAccessKey"]}
        yield Remote(
            name="s3team", good=good, wrong={**good, "secret_access_key": "not-the-secret"},
            dead={"url": f"s3://{BUCKET}/store", **good, "endpointurl": f"http://127.0.0.1:{free_port()}"},
            refused="Forbidden", unreachable="Could not connect to the endpoint URL",
            secrets=[key["SecretAccessKey"]])
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    binary = Path("/usr/sbin/sshd")
    require(binary.exists(), f"{binary} missing: apt-get install openssh-server (.ci/run does)")
    privsep = Path("/run/sshd")
    if not privsep.is_dir() and os.geteuid() == 0:
        privsep.mkdir(mode=0o755, parents=True)
    require(privsep.is_dir(), f"{privsep} (sshd's privilege-separation folder) missing and not root to create it")
    import asyncssh

    base = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "team_key", "stranger_key"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(base / name))
        (base / name).chmod(0o600)
        key.write_public_key(str(base / f"{name}.pub"))
    shutil.copy(base / "team_key.pub", base / "authorized_keys")
    port = free_port()
    (base / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {base / 'host_key'}",
        f"AuthorizedKeysFile {base / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "PidFile none", "Subsystem sftp internal-sftp", ""]))
    proc = start([str(binary), "-D", "-e", "-f", str(base / "sshd_config")], port, base / "sshd.log")
    try:
        good = {"port": str(port), "user": getpass.getuser(), "keyfile": str(base / "team_key")}
        yield Remote(
            name="sshteam", good=good, wrong={**good, "keyfile": str(base / "stranger_key")},
            dead={"url": f"ssh://127.0.0.1{base / 'unused'}", **good, "port": str(free_port())},
            refused="Permission denied", unreachable="Connect call failed",
            secrets=[(base / "team_key").read_text().splitlines()[1]])
    finally:
        stop(proc)


@pytest.fixture(scope="module", params=["s3", "ssh"])
def remote(request) -> Remote:
    return request.getfixturevalue({"s3": "moto", "ssh": "sshd"}[request.param])


@dataclass
class Origin:
    repo: Path
    base: Path
    remotes_commit: str  # the tiny run (dpo.beta 0.1) + the team remotes in .dvc/config
    beta_lock: str  # HEAD: dpo.beta 0.2, run only here


@pytest.fixture(scope="module")
def origin(tiny_run, tmp_path_factory) -> Origin:
    base = tmp_path_factory.mktemp("origin")
    repo = copy_repo(tiny_run.repo, base / "origin")
    (base / "ssh-store").mkdir()
    # Only names and addresses are committed; endpoints, users, keys and secrets go to config.local.
    dvc("remote", "add", "s3team", f"s3://{BUCKET}/store", cwd=repo)
    dvc("remote", "add", "sshteam", f"ssh://127.0.0.1{base / 'ssh-store'}", cwd=repo)
    git("add", ".dvc/config", cwd=repo)
    git("commit", "-q", "-m", "team remotes", cwd=repo)
    remotes_commit = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    edit_params(repo, dpo={"beta": 0.2})
    repro = dvc("repro", cwd=repo)
    assert stages_run(repro) == {"dpo"} | EVALUATION, output(repro)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "dpo.beta 0.2", cwd=repo)
    return Origin(repo=repo, base=base, remotes_commit=remotes_commit,
                  beta_lock=(repo / "dvc.lock").read_text())


def configure(repo: Path, name: str, options: dict[str, str]) -> None:
    for key, value in options.items():
        dvc("remote", "modify", "--local", name, key, value, cwd=repo)


def clone(origin: Origin, name: str) -> Path:
    path = origin.base / name
    git("clone", "-q", str(origin.repo), str(path), cwd=origin.base)
    return path


def test_credentials_only_in_config_local(origin, remote):
    repo = origin.repo
    configure(repo, remote.name, remote.good)
    assert_git_clean(repo)  # .dvc/config.local is git-ignored (DVC's own .dvc/.gitignore)
    git("check-ignore", "-q", ".dvc/config.local", cwd=repo)
    committed = (repo / ".dvc" / "config").read_text()
    history = git("log", "-p", "--all", "--", ".dvc", cwd=repo).stdout  # every committed DVC config
    local = (repo / ".dvc" / "config.local").read_text()
    for option, value in remote.good.items():  # addresses, users, key paths, key ids, secrets
        assert f"{option} = {value}" in local
        # The option never reaches a committed config. (Not the bare value: a user "root" also appears in
        # committed paths such as /tmp/pytest-of-root/..., which says nothing about credentials.)
        assert f"{option} = " not in committed and f"{option} = {value}" not in history
    for secret in remote.secrets:  # the secret itself (an S3 secret key; the SSH private key's material)
        assert secret not in history
        assert git("grep", "-q", "-F", secret, cwd=repo, check=False).returncode == 1  # nor anywhere tracked


def test_wrong_credential_and_unreachable_remote_lose_nothing(origin, remote):
    repo = origin.repo
    configure(repo, remote.name, remote.wrong)
    dead = f"{remote.name}-dead"
    dvc("remote", "add", "--local", "--force", dead, remote.dead["url"], cwd=repo)
    configure(repo, dead, {k: v for k, v in remote.dead.items() if k != "url"})
    before = tree_digest(repo)
    try:
        for target, says in ((remote.name, remote.refused), (dead, remote.unreachable)):
            # plain push: with --run-cache each run record is tried on its own, and against a dead S3
            # endpoint botocore's retries make that ~45 s here (docs/reliability.md)
            push = dvc("push", "-r", target, cwd=repo, check=False)
            assert push.returncode != 0, output(push)
            assert push.stdout == "" and says in push.stderr and push.stderr.startswith("ERROR: "), output(push)
            assert tree_digest(repo) == before  # workspace, cache, run-cache, configs: untouched
            assert status_json(repo) == {}
    finally:
        configure(repo, remote.name, remote.good)
        dvc("remote", "remove", "--local", dead, cwd=repo)
    assert_git_clean(repo)


def test_push_pull_and_run_cache(origin, remote):
    repo = origin.repo
    configure(repo, remote.name, remote.good)
    push = dvc("push", "-r", remote.name, "--run-cache", cwd=repo)  # HEAD's outputs + every run record
    assert "files pushed" in push.stdout, output(push)

    # A teammate's fresh clone: a wrong credential fails and leaves it as it was; the right one pulls
    # everything, and there is nothing to run.
    mate = clone(origin, f"mate-{remote.name}")
    dvc("remote", "default", "--local", remote.name, cwd=mate)
    configure(mate, remote.name, remote.wrong)
    before = tree_digest(mate)
    pull = dvc("pull", cwd=mate, check=False)
    assert pull.returncode != 0 and remote.refused in pull.stderr, output(pull)
    assert tree_digest(mate) == before
    configure(mate, remote.name, remote.good)
    dvc("pull", cwd=mate)
    assert_clean(mate)
    repro = dvc("repro", cwd=mate)
    assert stages_run(repro) == set(), output(repro)

    # Another clone, empty cache, at the commit before dpo.beta 0.2, asking for beta 0.2 again: a run that
    # only happened in origin. `dvc repro --pull` restores dpo from the remote's run-cache, no training.
    other = clone(origin, f"other-{remote.name}")
    git("checkout", "-q", origin.remotes_commit, cwd=other)
    dvc("remote", "default", "--local", remote.name, cwd=other)
    configure(other, remote.name, remote.good)
    edit_params(other, dpo={"beta": 0.2})
    repro = dvc("repro", "--pull", "dpo", cwd=other)
    # ("Pulling data for stage" for the upstream stages, whose outputs dvc.lock already names)
    assert stages_restored(repro) == {"dpo"} and stages_run(repro) == set(), output(repro)
    # ...exactly the outputs origin's own run produced. (reward and evaluate were not asked for; evaluate
    # would rerun: it keeps its outputs in git with `cache: false`, so it is never in the run-cache.)
    assert lock_outs((other / "dvc.lock").read_text(), "dpo") == lock_outs(origin.beta_lock, "dpo")
    assert set(status_json(other)) <= {"reward"} | EVALUATION  # dpo and its upstream: up to date
