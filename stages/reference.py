"""reference: log-probs of every training and held-out pair under the SFT model, computed once.

It reads no dpo.* key, so changing beta, the loss or the learning rate reuses its output. Launched as N ranks
(params.yaml `launcher`), rank r computes batches r, r + N, ... on its own plain copy of models/sft (no wrapper, no
adapter: nothing here can ever be the policy) and rank 0 writes the file."""

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.errors import exit_on_user_error
from preftune.params import section, start_stage
from preftune.paths import REFERENCE, REFERENCE_ENCODING, SFT, prepared
from preftune.pairs import BATCH, encode_pairs, logprobs_of, reference_key

log = logging.getLogger("reference")


def main() -> None:
    model_cfg = section(start_stage(__doc__), "model")
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=modeling.resolve_device(model_cfg["device"]).type == "cpu")
    device, rank, world = state.device, state.process_index, state.num_processes
    tokenizer = modeling.load_tokenizer(SFT)
    model = modeling.load_causal_lm(SFT).to(device)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    tensors = {}
    for split in ("train", "heldout"):
        encoded = encode_pairs(encode, data.read_jsonl(prepared(split)))
        for kind, sequences in encoded.items():
            # Whole batches per rank, the same batches as one process computes: the same bytes, however many ranks.
            mine = [(start, logprobs_of(model, sequences[start:start + BATCH], tokenizer.pad_token_id, device).tolist())
                    for start in range(0, len(sequences), BATCH)[rank::world]]
            found = dict(gather_object(mine))
            tensors[reference_key(split, kind)] = torch.tensor([x for start in sorted(found) for x in found[start]])
    if not state.is_main_process:
        return
    Path(REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, REFERENCE)
    data.write_json(REFERENCE_ENCODING, encode.stats())  # truncations this stage saw
    log.info("reference log-probs of %d train and %d held-out pairs; %s",
             len(tensors[reference_key("train", "chosen")]), len(tensors[reference_key("heldout", "chosen")]), encode.stats())


if __name__ == "__main__":
    with exit_on_user_error("reference"):
        main()
