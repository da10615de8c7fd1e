"""dpo: preference-tune the SFT model (a LoRA adapter by default) against the precomputed reference
log-probs, on pairs, or with dpo.loss: kto on unpaired feedback. Saves models/dpo: a plain model (the adapter
merged into the base; loads with AutoModelForCausalLM, no peft) with its tokenizer and manifest.json, and the
adapter itself in models/dpo/adapter. Logs metrics/dpo and metrics/dpo_steps (DVCLive)."""

from preftune import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

from safetensors.torch import load_file

from preftune import data, modeling
from preftune.batching import Encoder
from preftune.errors import exit_on_user_error
from preftune.paths import DPO, REFERENCE, SFT, live, prepared
from preftune.preference import preference_objective
from preftune.policy import train_and_save
from preftune.training import start_training


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("dpo", __doc__)  # seed: dpo.seed when set
    tokenizer = modeling.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    # Built before any model loads: data that does not suit the loss, a reference file made from other data, or a
    # batch larger than the data is one line.
    objective = preference_objective(run, encode, data.read_jsonl(prepared("train")),
                                     data.read_jsonl(prepared("heldout")), cfg, load_file(REFERENCE), REFERENCE)
    train_and_save(run, cfg, seed, objective, tokenizer, encode, start=SFT, out=DPO,
                   lives=(live("dpo"), live("dpo_steps")), card=(params, "dpo", prepared("train")))
    run.end()


if __name__ == "__main__":
    with exit_on_user_error("dpo"):
        main()
