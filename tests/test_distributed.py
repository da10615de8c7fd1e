"""Data parallel training on CPU: the `dpo` and `reference` stages as 2 ranks under torchrun (gloo backend), in a
clone where the tiny pipeline has run. What a step sees must not depend on how it is spread: 2 ranks x batch 4,
1 process x batch 8 and accumulation 2 x batch 4 give the same adapter (within float tolerance), only rank 0
writes, and the reference stage on 2 ranks writes the same bytes as on 1 and never reads a policy."""

import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import yaml
from dvc_helpers import ENV, VENV_BIN, _run, copy_repo, dvc, edit_params, output, stages_run

pytestmark = pytest.mark.slow

ADAPTER = "models/dpo/adapter/adapter_model.safetensors"
REFERENCE = "data/reference/logps.safetensors"
# Every file a rank opens, with "w" when it opens it for writing: a stage run under this wrapper logs to
# $OPEN_LOG.<rank>. The audit hook sees Python's own opens (json, yaml, open(), os.open), not native writers.
WRAPPER = textwrap.dedent("""
    import os, runpy, sys
    log = open(os.environ["OPEN_LOG"] + "." + os.environ.get("RANK", "0"), "w")
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE)
            log.write(("w " if writes else "r ") + os.path.abspath(os.fsdecode(args[0])) + "\\n")
            log.flush()
    sys.addaudithook(hook)
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
""")


def stage(repo: Path, script: str, ranks: int, tmp: Path):
    """Run stages/<script> as `ranks` processes (torchrun for 2) under the open-logging wrapper."""
    wrapper = tmp / "opens.py"
    wrapper.write_text(WRAPPER)
    env = {**ENV, "OPEN_LOG": str(tmp / f"{script}-{ranks}"), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    launcher = [str(VENV_BIN / "torchrun"), "--nproc_per_node", str(ranks)] if ranks > 1 else [str(VENV_BIN / "python")]
    _run([*launcher, str(wrapper), f"stages/{script}.py"], repo, env=env)
    return {rank: (tmp / f"{script}-{ranks}.{rank}").read_text().splitlines() for rank in range(ranks)}


def under(repo: Path, opens: list[str], folder: str, mode: str = "w") -> list[str]:
    root = str((repo / folder).resolve())
    return [line[2:] for line in opens if line.startswith(mode + " ") and line[2:].startswith(root)]


@pytest.fixture(scope="module")
def workspace(tiny_run, tmp_path_factory):
    """A copy of the tiny run, its DPO set up so that nothing random differs between launches (no LoRA dropout:
    each rank draws its own dropout masks), with 3 epochs, so that 2 of its 3 batch sizes divide unevenly."""
    repo = copy_repo(tiny_run.repo, tmp_path_factory.mktemp("distributed") / "repo")
    # One thread a process, which is what each of 2 ranks takes (threads // ranks): the bits depend on the thread
    # count (numerics.py), and these tests compare one process with 2 ranks.
    edit_params(repo, threads=1)
    edit_params(repo, dpo={"epochs": 3, "lr": 0.003, "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                                                               "target_modules": "auto"}})
    return repo


def dpo_adapter(repo: Path, tmp: Path, ranks: int, batch_size: int, accumulation: int):
    edit_params(repo, dpo={"batch_size": batch_size, "gradient_accumulation_steps": accumulation})
    opens = stage(repo, "dpo", ranks, tmp)
    manifest = json.loads((repo / "models/dpo/manifest.json").read_text())
    return load_file(repo / ADAPTER), manifest, opens


def test_two_ranks_and_accumulation_train_the_same_adapter_as_one_process(workspace, tmp_path):
    one, m1, _ = dpo_adapter(workspace, tmp_path, ranks=1, batch_size=8, accumulation=1)
    two, m2, opens = dpo_adapter(workspace, tmp_path, ranks=2, batch_size=4, accumulation=1)
    acc, m3, _ = dpo_adapter(workspace, tmp_path, ranks=1, batch_size=4, accumulation=2)

    assert (m1["world_size"], m2["world_size"], m3["world_size"]) == (1, 2, 1)
    assert m1["effective_batch_size"] == m2["effective_batch_size"] == m3["effective_batch_size"] == 8
    assert m3["gradient_accumulation_steps"] == 2
    assert set(one) == set(two) == set(acc)
    lora_b = max(one[k].abs().max().item() for k in one if "lora_B" in k)
    assert lora_b > 1e-3, "the adapter did not train: the comparison would prove nothing"
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"2 ranks x 4: {name}")
        torch.testing.assert_close(acc[name], one[name], rtol=1e-4, atol=1e-5, msg=f"accumulation 2 x 4: {name}")
    assert m1["final_train_loss"] == pytest.approx(m2["final_train_loss"], abs=1e-5)
    assert m1["final_train_loss"] == pytest.approx(m3["final_train_loss"], abs=1e-5)

    # Only rank 0 writes: rank 1 opened nothing under models/ or metrics/ for writing, rank 0 did.
    assert under(workspace, opens[0], "models/dpo") and under(workspace, opens[0], "metrics/dpo")
    assert under(workspace, opens[1], "models") == [] and under(workspace, opens[1], "metrics") == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_agents_train_what_one_process_trains(workspace, tmp_path):
    """Two nodes of one rank each, as a cluster runs them, on one host: `dvc repro -s dpo` runs the stage's command
    on the first node, `launcher: torchrun --nnodes 2 ... --rdzv-backend c10d --rdzv-endpoint <host>:<port>
    launch/follow.py`, and the second node's agent is started beside it with the same rendezvous and no stage at all
    (what a SkyPilot task does on every other node, launch/README.md): follow.py gives it the head's. 2 nodes x 1
    rank x 4 pairs train the adapter of 1 process x 8."""
    one, m1, _ = dpo_adapter(workspace, tmp_path, ranks=1, batch_size=8, accumulation=1)
    edit_params(workspace, dpo={"batch_size": 4, "gradient_accumulation_steps": 1})
    agent = ["torchrun", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "dpo"]
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["launcher"] = " ".join([*agent, "launch/follow.py"])
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**ENV, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    second = subprocess.Popen([str(VENV_BIN / agent[0]), *agent[1:], "launch/follow.py"], cwd=workspace, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        repro = dvc("repro", "-s", "dpo", cwd=workspace, env=env, check=False)
        second_log, _ = second.communicate(timeout=600)
    finally:
        second.kill()
    assert repro.returncode == 0 and stages_run(repro) == {"dpo"}, output(repro)
    assert second.returncode == 0, second_log
    two = load_file(workspace / ADAPTER)
    m2 = json.loads((workspace / "models/dpo/manifest.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2) and m2["effective_batch_size"] == 8
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=f"2 nodes x 4: {name}")
    assert m1["final_train_loss"] == pytest.approx(m2["final_train_loss"], abs=1e-5)


LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "auto"}
FULL_LR = 3e-4  # full fine-tuning: every weight moves, at a full fine-tune's usual learning rate
# Full fine-tuning's weights against one process: AdamW moves a weight whose gradient is float noise by up to lr
# a step, so plain DDP itself is 2.7e-5 off one process on 1 of wpe's 4,096 weights (the rows of positions the
# short rows barely reach). A third of one step; against DDP the sharded weights are held to float noise.
FULL_ATOL = 1e-4
MODEL = "models/dpo/model.safetensors"


def grad_norms(repo: Path) -> list[float]:
    rows = (repo / "metrics/dpo_steps/plots/metrics/grad_norm.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


def trained(repo: Path, tmp: Path, ranks: int, sharding: str, lora: bool):
    """Train dpo on `ranks` ranks x 8 / ranks pairs under `sharding`: (its weights, as saved and loaded on this
    one process, and every step's gradient norm)."""
    edit_params(repo, sharding=sharding, dpo={"batch_size": 8 // ranks, "gradient_accumulation_steps": 1,
                                              "lora": LORA if lora else None, "lr": 0.003 if lora else FULL_LR})
    stage(repo, "dpo", ranks, tmp)
    return load_file(repo / (ADAPTER if lora else MODEL)), grad_norms(repo)


@pytest.fixture(scope="module")
def unsharded(workspace, tmp_path_factory):
    """The LoRA and the full fine-tune of 1 process and of 2 DDP ranks, once for every sharding test."""
    tmp = tmp_path_factory.mktemp("unsharded")
    return {(ranks, lora): trained(workspace, tmp, ranks, "none", lora) for ranks in (1, 2) for lora in (True, False)}


@pytest.mark.parametrize("sharding", ["fsdp2", "zero3", "zero2"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_sharded_dpo_on_two_ranks_trains_what_one_process_trains(workspace, unsharded, tmp_path, sharding, lora):
    """FSDP2, ZeRO-3 and ZeRO-2 on 2 CPU ranks (gloo): the saved weights (gathered on rank 0, loaded here with
    safetensors as any later stage loads them) are one process's within the tolerance above, and DDP's within
    float noise, and every step's gradient norm is one process's. The norms are the averaging check: AdamW hardly
    sees a gradient's scale, so weights alone would pass with gradients summed over the ranks (FSDP2 on gloo,
    pytorch issue 162338), but the norm would be 2x."""
    (one, one_norms), (ddp, _) = unsharded[(1, lora)], unsharded[(2, lora)]
    got, norms = trained(workspace, tmp_path, 2, sharding, lora)
    manifest = json.loads((workspace / "models/dpo/manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["effective_batch_size"] == 8
    assert set(got) == set(one), "the saved weights have other names than one process's"
    assert not lora or max(one[k].abs().max().item() for k in one if "lora_B" in k) > 1e-3, "LoRA did not train"
    for name in one:
        torch.testing.assert_close(got[name], ddp[name], rtol=1e-5, atol=1e-7, msg=f"{sharding} vs DDP: {name}")
        torch.testing.assert_close(got[name], one[name], rtol=1e-4, atol=1e-5 if lora else FULL_ATOL,
                                   msg=f"{sharding} vs 1 process: {name}")
    assert len(norms) == len(one_norms) == 12  # 3 epochs of 30 pairs in 8s: 4 steps each
    assert norms == pytest.approx(one_norms, rel=1e-4), f"{sharding}: gradient norms {norms} vs {one_norms}"


def test_reference_on_two_ranks_equals_one_and_reads_no_policy(workspace, tmp_path):
    one_opens = stage(workspace, "reference", 1, tmp_path)
    one = (workspace / REFERENCE).read_bytes()
    encoding_one = (workspace / "data/reference/encoding.json").read_text()
    opens = stage(workspace, "reference", 2, tmp_path)

    assert (workspace / REFERENCE).read_bytes() == one  # each rank runs whole batches of one process's run
    assert len(load_file(workspace / REFERENCE)["train/chosen"]) == 30
    assert (workspace / "data/reference/encoding.json").read_text() == encoding_one
    assert under(workspace, opens[1], "data") == []  # rank 1 wrote nothing
    # The reference is the SFT model's: no rank of either launch read anything of models/dpo.
    for rank_opens in [*one_opens.values(), *opens.values()]:
        assert under(workspace, rank_opens, "models/dpo", mode="r") == []
        assert under(workspace, rank_opens, "models/sft", mode="r")
    assert os.path.isdir(workspace / "models/dpo/adapter")  # there was a policy to read, and it was not read


def test_dpo_at_bf16_holds_the_base_in_bf16_and_saves_the_fp32_merge(tiny_run, tmp_path):
    """`dpo.precision: bf16` under LoRA: the stage holds the frozen base in bf16 while it trains, and models/dpo is
    still the fp32 SFT weights with the adapter merged in (the base is reloaded for the merge, not the rounded one)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    repo = copy_repo(tiny_run.repo, tmp_path / "repo")
    # native numerics: the merge below is recomputed in this test's process, which pins nothing (numerics.py), and
    # MKL's portable path rounds a matmul's last bits otherwise
    edit_params(repo, numerics="native", dpo={"precision": "bf16", "epochs": 1})
    proc = _run([str(VENV_BIN / "python"), "stages/dpo.py"], repo)
    assert "frozen base held in bf16" in proc.stderr + proc.stdout
    merged = AutoModelForCausalLM.from_pretrained(repo / "models/dpo")
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(repo / "models/sft"),
                                         repo / "models/dpo/adapter").merge_and_unload()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    for (name, got), (_, want) in zip(merged.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(got, want), name
