"""Saving what a run trained: the model inside the trained wrapper, gathered from its shards where it is sharded,
written once by the main process."""

from __future__ import annotations

from . import sharding


def save_trained(process, model, path: str) -> None:
    """Save the trained model inside the prepared wrapper (its `.model`) to `path`, once, from the main process.
    Every rank calls this: under FSDP and ZeRO-3 the full weights are gathered here."""
    acc = process.accelerator
    acc.wait_for_everyone()
    if process.fsdp2:
        state = sharding.full_state_dict_fsdp2(model)
    else:
        state = acc.get_state_dict(model) if process.sharded else None
    if process.is_main:
        inner = model.model if process.fsdp2 else acc.unwrap_model(model).model
        if state is not None:
            state = without_tied_copies(inner, {k.removeprefix("model."): v for k, v in state.items()})
        if inner.config.use_cache is False:  # enable_checkpointing's: a training setting, not saved with the model
            inner.gradient_checkpointing_disable()
            inner.config.use_cache = True
        inner.save_pretrained(path, state_dict=state)
    acc.wait_for_everyone()


def without_tied_copies(model, state: dict) -> dict:
    """A gathered state dict without the second names of tied weights (GPT-2's lm_head.weight is wte's): gathering
    copies each name's tensor, so save_pretrained would store the tied head twice; one process saves it once."""
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in tied}
