"""Exact resume: `dvc repro` killed (SIGKILL to the whole tree) once `dpo` has finished epoch 2's steps, then
`dvc repro` again. The stage resumes from its last checkpoint (one log line says so) and ends with exactly the
dvc.lock of a run that was never killed: the same model, adapter and manifest bytes, the same DVCLive files (so
the step count went on where it stopped), the same git-tracked evaluation; and no checkpoint is left behind."""

import pytest

from dvc_helpers import ENV, EVALUATION, Background, copy_repo, dvc, edit_params, git, output, stages_run, tree_digest

pytestmark = pytest.mark.slow

# 30 training pairs in batches of 2: 15 steps an epoch, a checkpoint every 4 steps and at each epoch's end,
# so the kill lands between checkpoints of either kind.
DPO = {"epochs": 6, "batch_size": 2}
CHECKPOINTS = {"every_steps": 4, "keep": False}


def configured(tiny_run, dest):
    repo = copy_repo(tiny_run.repo, dest)
    edit_params(repo, dpo=DPO, checkpoints=CHECKPOINTS)
    git("commit", "-qam", "longer dpo, checkpoints every 4 steps", cwd=repo)
    return repo


def test_killed_dpo_resumes_to_the_uninterrupted_outputs(tiny_run, tmp_path):
    straight = configured(tiny_run, tmp_path / "straight")
    assert stages_run(dvc("repro", cwd=straight)) == {"dpo"} | EVALUATION
    assert not (straight / "checkpoints").exists()

    repo = configured(tiny_run, tmp_path / "killed")
    run = Background(["repro"], repo)
    seen = run.wait_for("dpo: epoch 2:")
    assert seen is not None, run.text
    killed = run.kill_tree()
    assert killed is not None and "dpo: epoch 6:" not in run.text, f"the kill came too late:\n{run.text}"
    assert any((repo / "checkpoints" / "dpo").rglob("position.json")), "no checkpoint to resume from"

    repro = dvc("repro", cwd=repo)
    text = output(repro)
    assert stages_run(repro) == {"dpo"} | EVALUATION, text
    resumed = [line for line in text.splitlines() if "resuming from checkpoint" in line]
    assert len(resumed) == 1, text
    # Killed after epoch 2's last step: the latest checkpoint is epoch 2's last mid-epoch one (step 12 of 15) or
    # the one at its end, whichever was written before the kill.
    epoch = int(resumed[0].split(": epoch ")[1].split(",")[0])
    step = int(resumed[0].split("after step ")[1].split(" ")[0])
    assert (epoch, step) >= (2, 12), resumed[0]
    assert "dpo: epoch 1:" not in text and "dpo: epoch 6:" in text  # it went on, it did not start over
    assert (repo / "dvc.lock").read_text() == (straight / "dvc.lock").read_text()
    assert tree_digest(repo / "metrics") == tree_digest(straight / "metrics")  # DVCLive and git-tracked files
    assert not (repo / "checkpoints").exists()


@pytest.mark.parametrize("sharding", ["fsdp2", "zero3"])
def test_killed_sharded_dpo_resumes_to_the_uninterrupted_outputs(tiny_run, tmp_path, sharding):
    """The same kill and resume on 2 CPU ranks with the model sharded: FSDP2's checkpoint is each rank's shards of
    the weights and the optimizer (torch.distributed.checkpoint), ZeRO-3's DeepSpeed's own; either way the resumed
    run's dvc.lock is the uninterrupted one's. `dvc repro dpo`: what follows dpo is a function of its outputs, and
    the test above checks it once."""
    env = {**ENV, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}

    def sharded(dest):
        repo = copy_repo(tiny_run.repo, dest)
        edit_params(repo, launcher="torchrun --standalone --nproc_per_node 2", sharding=sharding,
                    dpo={**DPO, "epochs": 4, "batch_size": 1}, checkpoints=CHECKPOINTS)  # 2 ranks x 1: 15 steps
        git("commit", "-qam", f"dpo on 2 ranks, {sharding}", cwd=repo)
        return repo

    straight = sharded(tmp_path / "straight")
    repro = dvc("repro", "dpo", cwd=straight, env=env)
    assert "dpo" in stages_run(repro) and not stages_run(repro) & EVALUATION, output(repro)
    repo = sharded(tmp_path / "killed")
    run = Background(["repro", "dpo"], repo, env=env)
    assert run.wait_for("dpo: epoch 2:") is not None, run.text
    assert run.kill_tree() is not None and "dpo: epoch 4:" not in run.text, f"the kill came too late:\n{run.text}"
    checkpoints = list((repo / "checkpoints" / "dpo").rglob("position.json"))
    assert checkpoints, "no checkpoint to resume from"
    if sharding == "fsdp2":  # one shard file per rank beside accelerate's RNG states
        assert len(list(checkpoints[0].parent.glob("fsdp2/*.distcp"))) == 2

    repro = dvc("repro", "dpo", cwd=repo, env=env)
    text = output(repro)
    assert len([line for line in text.splitlines() if "resuming from checkpoint" in line]) == 1, text
    assert "dpo: epoch 1:" not in text and "dpo: epoch 4:" in text
    assert (repo / "dvc.lock").read_text() == (straight / "dvc.lock").read_text()
    assert tree_digest(repo / "metrics") == tree_digest(straight / "metrics")
    assert not (repo / "checkpoints").exists()
