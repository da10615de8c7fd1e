"""reference: log-probs of every training and held-out row under the SFT model, computed once.

It reads one dpo key, dpo.precision (the policy's log-probs at step 0 must be computed as these are), so changing
beta, the loss or the learning rate reuses its output. Launched as N ranks
(params.yaml `launcher`), rank r computes batches r, r + N, ... on its own plain copy of models/sft (no wrapper, no
adapter: nothing here can ever be the policy) and rank 0 writes the file."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

import logging
from pathlib import Path

from safetensors.torch import save_file

from preftune.data.encoding import Encoder
from preftune.model import loading, runtime
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.params import section, start_stage
from preftune.pipeline.paths import REFERENCE, REFERENCE_ENCODING, SFT, prepared
from preftune.train.pairs import reference_tensors

log = logging.getLogger("reference")


def main() -> None:
    params = start_stage("reference", __doc__)
    model_cfg, precision = section(params, "model"), section(params, "dpo")["precision"]
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=runtime.resolve_device(model_cfg["device"]).type == "cpu")
    device, rank, world = state.device, state.process_index, state.num_processes
    tokenizer = loading.load_tokenizer(SFT)
    model = loading.load_causal_lm(SFT).to(device).eval()
    encode = Encoder(tokenizer, model_cfg["max_length"])
    rows = {split: files.read_jsonl(prepared(split)) for split in ("train", "heldout")}
    log.info("%d train and %d held-out rows: their sequences' log-probs under %s, %d process(es)", len(rows["train"]),
             len(rows["heldout"]), SFT, world)
    tensors = reference_tensors(model, rows, encode, device, precision, rank, world, gather_object)
    if not state.is_main_process:
        return
    Path(REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, REFERENCE)
    files.write_json(REFERENCE_ENCODING, encode.stats())  # truncations this stage saw
    log.info("reference log-probs (%s) of %d train and %d held-out rows; %s", precision, len(rows["train"]),
             len(rows["heldout"]), encode.stats())


if __name__ == "__main__":
    with exit_on_user_error("reference"):
        main()
