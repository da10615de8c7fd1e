"""LoRA: which modules get adapters, attaching them, their dropout, and the frozen base's dtype."""

from __future__ import annotations

import warnings

import torch

from ..pipeline.errors import ConfigError

# LoRA targets of `target_modules: auto`, by config.model_type; any other architecture gets all-linear.
AUTO_LORA_TARGETS = {"gpt2": ["c_attn", "c_proj"]}


def lora_targets(model, spec) -> list[str]:
    """Module names for LoRA: a list as given, `all-linear` (every Linear/Conv1D but the output head, as
    peft and QLoRA define it), or `auto` (AUTO_LORA_TARGETS for the architecture, else all-linear)."""
    if spec == "auto":
        spec = AUTO_LORA_TARGETS.get(model.config.model_type, "all-linear")
    if spec == "all-linear":
        head = model.get_output_embeddings()
        return sorted({name.split(".")[-1] for name, m in model.named_modules()
                       if name and _is_linear(m) and m is not head})
    if isinstance(spec, str) or not isinstance(spec, list) or not all(isinstance(t, str) for t in spec):
        raise ConfigError(f"params.yaml: dpo.lora.target_modules: {spec!r}; use auto, all-linear "
                          "or a list of module names such as [q_proj, v_proj]")
    return spec


def attach_lora(model, r: int, alpha: int, dropout: float, target_modules):
    """Wrap `model` with a trainable LoRA adapter; the frozen base stays the reference."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, target_modules)
    # The same rule as peft: a target names a module exactly or by its trailing dotted components.
    matched = [m for name, m in model.named_modules()
               if any(name == t or name.endswith("." + t) for t in targets)]
    if not matched:
        raise ConfigError(
            f"params.yaml: dpo.lora.target_modules: {targets} match no module of this model; "
            f"pick from its linear layers, e.g. {sorted(_linear_module_names(model))[:8]}, or use all-linear")
    # GPT-2 stores its projections as Conv1D (weights transposed): LoRA must know, or its update is wrong.
    fan_in_fan_out = all(isinstance(m, Conv1D) for m in matched)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, config)
    # peft keeps target_modules as a set, whose order (and so adapter_config.json's bytes) changes with
    # the interpreter's hash seed; a sorted list makes the saved adapter a pure function of its inputs.
    model.peft_config["default"].target_modules = sorted(model.peft_config["default"].target_modules)
    for module in model.modules():
        for name, drop in getattr(module, "lora_dropout", {}).items():
            if type(drop) is torch.nn.Dropout:
                module.lora_dropout[name] = BitsDropout(drop.p)
    return model


class BitsDropout(torch.nn.Dropout):
    """nn.Dropout's distribution (each element kept with probability 1 - p, then scaled by 1 / (1 - p)), its mask
    drawn on CPU as 31 random bits per element: torch's CPU bernoulli_ took 15% of a LoRA DPO step on SmolLM2
    (7 adapters a layer, each dropping its own input), this about half of that (benchmarks/README.md). The
    backward keeps only the boolean mask. On other devices, nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.empty(x.shape, dtype=torch.int32).random_() >= round(self.p * 2 ** 31)  # random_: [0, 2^31)
        return torch.where(keep, x, 0.0) * (1.0 / (1.0 - self.p))


def frozen_linears_to(model, dtype: torch.dtype) -> int:
    """Under LoRA with bf16 autocast: hold the frozen linear layers' weights in `dtype` (QLoRA-style recipes keep the
    base in bf16 and the adapters in fp32). Autocast casts these weights to bf16 on every forward anyway, with the
    same rounding, so the log-probs do not change; what goes is the fp32 copy and the cast on every forward. The
    adapters, the embeddings, the output head and the norms stay as they are. Returns the parameters moved."""
    keep = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    moved = 0
    for module in model.modules():
        if _is_linear(module):
            for param in module.parameters(recurse=False):
                if not param.requires_grad and id(param) not in keep:
                    param.data = param.data.to(dtype)
                    moved += param.numel()
    return moved


def _is_linear(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _linear_module_names(model) -> set[str]:
    return {name.split(".")[-1] for name, m in model.named_modules() if name and _is_linear(m)}
