"""reference: log-probs of every training and held-out pair under the SFT model, computed once.

It reads no dpo.* key, so changing beta, the loss or the learning rate reuses its output."""

import logging
from pathlib import Path

from safetensors.torch import save_file

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.errors import exit_on_user_error
from preftune.params import section, start_stage
from preftune.preference import encode_pairs, logprobs_of

SFT, OUT = "models/sft", "data/reference/logps.safetensors"
log = logging.getLogger("reference")


def main() -> None:
    model_cfg = section(start_stage(__doc__), "model")
    device = modeling.resolve_device(model_cfg["device"])
    tokenizer = modeling.load_tokenizer(SFT)
    model = modeling.load_causal_lm(SFT).to(device)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    tensors = {}
    for split in ("train", "heldout"):
        encoded = encode_pairs(encode, data.read_jsonl(f"data/prepared/{split}.jsonl"))
        for kind, sequences in encoded.items():
            tensors[f"{split}/{kind}"] = logprobs_of(model, sequences, tokenizer.pad_token_id, device).contiguous()
    Path(OUT).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT)
    data.write_json(Path(OUT).parent / "encoding.json", encode.stats())  # truncations this stage saw
    log.info("reference log-probs of %d train and %d held-out pairs; %s",
             len(tensors["train/chosen"]), len(tensors["heldout/chosen"]), encode.stats())


if __name__ == "__main__":
    with exit_on_user_error("reference"):
        main()
