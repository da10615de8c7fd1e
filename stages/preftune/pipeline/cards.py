"""Model cards: the README.md (Hugging Face's format: YAML metadata, then text) that every saved model carries,
written by the stage that saves the model, from what that stage knows: the base model, the data and its hash, the
settings. A pure function of those inputs (no dates, hosts, absolute paths or git revisions), so a rerun writes
the same bytes. The evaluation results are not in it: `evaluate` runs after the model exists, and a card that held
them would make the model an output of evaluate too; metrics/headline.json and metrics/eval.json of the commit
whose dvc.lock lists the model hold them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

KINDS = {  # kind: (pipeline_tag, tags, how to load it)
    "sft": ("text-generation", ["preftune", "sft"], "AutoModelForCausalLM"),
    "reward": ("text-classification", ["preftune", "reward-model"], "AutoModelForSequenceClassification"),
    "dpo": ("text-generation", ["preftune", "dpo"], "AutoModelForCausalLM"),
}


def hub_id(base: str) -> str | None:
    """model.base as Hugging Face metadata: a hub id (org/name) only; scratch, files, folders and packages have none."""
    if base == "scratch" or base.startswith(("package:", ".", "/")) or base.endswith(".gguf") or os.path.exists(base):
        return None
    return base


def write_model_card(directory: str, kind: str, params: dict, settings: dict, section: str, start: str,
                     data_file: str) -> None:
    """`directory`/README.md for a model of `kind` (sft, reward, dpo) trained from `start` on `data_file` with
    `settings` (params.yaml's `section`, as the stage used it)."""
    tag, tags, loader = KINDS[kind]
    base, source = params["model"]["base"], params["data"]["source"]
    digest = hashlib.sha256(Path(data_file).read_bytes()).hexdigest()
    meta = {"library_name": "transformers", "pipeline_tag": tag,
            "tags": tags + (["lora"] if kind == "dpo" and settings.get("lora") else [])}
    if hub_id(base):
        meta["base_model"] = hub_id(base)
    text = "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {kind} model trained by preftune", "",
        f"- **Stage:** `{section}` of the pipeline's `dvc.yaml`, from `{start}`.",
        f"- **Base model:** `{base}`.",
        f"- **Data:** `{source}`; the prepared training file `{data_file}` has sha256 `{digest}`.",
        f"- **Load:** `{loader}.from_pretrained(\"<this folder>\")`.",
        "- **Evaluation:** `metrics/headline.json` and `metrics/eval.json` of the commit whose `dvc.lock` lists this "
        "model (written after it, by the `evaluate` stage).", "",
        f"## Settings (`params.yaml` {section})", "", "```yaml",
        yaml.safe_dump(dict(settings), sort_keys=False).rstrip(), "```", ""])
    Path(directory, "README.md").write_text(text, encoding="utf-8")
