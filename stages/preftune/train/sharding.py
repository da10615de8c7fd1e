"""Sharded training, chosen by `sharding` in params.yaml, the same code on CPU ranks (gloo) and GPUs (NCCL):

  none    every rank holds the whole model (plain DDP under several processes);
  fsdp2   PyTorch's FSDP2 (`fully_shard`): each decoder layer its own shard group, then the root (torchtune's way).
          accelerate's FSDP plugin is not used: accelerate 1.15 turns FSDP on for GPU launches only, so it could
          never run, or be tested, on CPU ranks;
  zero2   DeepSpeed ZeRO-2 (optimizer state and gradients sharded) and
  zero3   ZeRO-3 (parameters too), both through accelerate's DeepSpeedPlugin, built here from the stage's params so
          that accumulation and clipping cannot disagree with them. On CPU, DeepSpeed's CPU accelerator with gloo.

With one process there is nothing to shard, and every setting trains as `none` (the log says so).

FSDP2's gradients are reduced as a *sum*, never an average: on gloo FSDP2 may sum where it should average
(pytorch issue 162338), so the loop scales each micro-batch's loss to its share of the global batch's mean and
asks for the sum on every backend (`shard_fsdp2`), which is right whatever the backend does with an average.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch

from ..pipeline.errors import ConfigError

log = logging.getLogger("sharding")


def effective(sharding: str, world: int) -> str:
    if sharding != "none" and world == 1:
        log.info("sharding: %s with one process: nothing to shard, training unsharded", sharding)
        return "none"
    return sharding


def before_accelerate(device_type: str) -> None:
    """accelerate imports DeepSpeed where it is installed, and DeepSpeed, finding no GPU, warns on every stage
    that it falls back to the CPU: say so first. Its ZeRO collectives call torch APIs that torch deprecates, one
    FutureWarning per layer and step: not the user's to act on."""
    if device_type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore", r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is "
                            "deprecated", FutureWarning)


def refuse_accelerate_config() -> None:
    """An accelerate config that turns on FSDP or DeepSpeed itself would bypass the params; one way in."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or "ACCELERATE_DEEPSPEED_ZERO_STAGE" in os.environ:
        raise ConfigError("params.yaml: launcher: this accelerate config turns on FSDP or DeepSpeed; set sharding: "
                          "fsdp2, zero2 or zero3 in params.yaml instead and launch with torchrun or launch/ddp.yaml")


def accelerator_options(sharding: str, cfg: dict, device_type: str) -> dict:
    """The Accelerator's keyword arguments for `sharding`: for ZeRO, its DeepSpeedPlugin (on CPU with DeepSpeed's
    CPU accelerator and gloo: accelerate would otherwise find no distributed backend off a GPU)."""
    if sharding not in ("zero2", "zero3"):
        return {"cpu": device_type == "cpu"}
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(f"params.yaml: sharding: {sharding} needs DeepSpeed, which is an optional extra; "
                          "pip install 'deepspeed==0.19.8' (setup.sh installs it)") from None
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    plugin = DeepSpeedPlugin(zero_stage=int(sharding[-1]), gradient_accumulation_steps=cfg["gradient_accumulation_steps"],
                             gradient_clipping=cfg["max_grad_norm"], zero3_init_flag=False,
                             zero3_save_16bit_model=True, offload_optimizer_device="none", offload_param_device="none")
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg["batch_size"]
    options = {"cpu": False, "deepspeed_plugin": plugin}
    if device_type == "cpu":
        options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    return options


def size_deepspeed_buckets(accelerator, config) -> None:
    """ZeRO's communication buckets sized to the model, by accelerate's own rule for its `auto` values (hidden
    size squared). DeepSpeed's fixed defaults (5e8 elements) cost each rank about 2 GB of buffers whatever the
    model: ZeRO-2's peak RSS on the tiny scratch model was 2.3 GB against DDP's 0.4 GB."""
    hidden = getattr(config, "hidden_size", None) or max(getattr(config, "hidden_sizes", None) or [0]) or None
    if hidden:
        accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"].update(
            reduce_bucket_size=hidden * hidden, stage3_prefetch_bucket_size=int(0.9 * hidden * hidden),
            stage3_param_persistence_threshold=10 * hidden)


def whole_model_loading(sharding: str) -> None:
    """Under ZeRO-3, make `from_pretrained` load whole models again once the Accelerator is built. accelerate's
    plugin registers its config with transformers, which then partitions every model it loads across the ranks (a
    collective). The stages load the whole model on every rank before the engine shards it (zero3_init_flag off),
    and rank 0 alone reloads saved models after training; a partitioned load there would wait for the other ranks
    for ever."""
    if sharding == "zero3":
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def shard_fsdp2(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """FSDP2 over every rank: each decoder layer (the classes in the model's `_no_split_modules`) a shard group,
    the rest (embeddings, final norm, a tied head) in the root's. Gradients reduce as a sum (see the docstring)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    layer_classes = set(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in module.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ConfigError(f"sharding: fsdp2 found no decoder layers in {type(module).__name__} (the model names "
                          "none in _no_split_modules); use sharding: zero3, or none")
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    module.to(device)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for shard in [*layers, module]:
        shard.set_force_sum_reduction_for_comms(True)
        shard.set_gradient_divide_factor(1.0)
    return module


def clip_fsdp2(module: torch.nn.Module, max_norm: float) -> float:
    """Clip the sharded gradients to max_norm over the whole model; the norm before clipping."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], max_norm)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def full_state_dict_fsdp2(module: torch.nn.Module) -> dict:
    """The whole model's weights, gathered on rank 0 (on CPU); an empty dict on the other ranks. Every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_sharded(path: str, module: torch.nn.Module, optimizer) -> None:
    """Each rank writes its own shards of the weights and the optimizer state (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(module, optimizer)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=path)


def load_sharded(path: str, module: torch.nn.Module, optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(module, optimizer)
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
