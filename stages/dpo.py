"""dpo: preference-tune the SFT model (a LoRA adapter by default) against the precomputed reference
log-probs, on pairs, or with dpo.loss: kto on unpaired feedback. Saves models/dpo: a plain model (the adapter
merged into the base; loads with AutoModelForCausalLM, no peft) with its tokenizer and manifest.json, and the
adapter itself in models/dpo/adapter. Logs metrics/dpo and metrics/dpo_steps (DVCLive)."""

from preftune.pipeline import numerics

if __name__ == "__main__":  # as a stage (python, torchrun), not when a test imports a function from it
    numerics.pin()  # first, before torch loads: the CPU libraries read their settings once (numerics.py)

from safetensors.torch import load_file

from preftune.data.encoding import Encoder
from preftune.model import loading
from preftune.pipeline import files
from preftune.pipeline.errors import exit_on_user_error
from preftune.pipeline.paths import DPO, REFERENCE, SFT, live, prepared
from preftune.train.loop import start_training
from preftune.train.losses import PreferenceLoss
from preftune.train.policy import train_and_save
from preftune.train.preference_objective import preference_objective


def main() -> None:
    params, model_cfg, cfg, run, seed = start_training("dpo", __doc__)  # seed: dpo.seed when set
    tokenizer = loading.load_tokenizer(SFT)
    encode = Encoder(tokenizer, model_cfg["max_length"])
    # Built before any model loads: data that does not suit the loss, a reference file made from other data, or a
    # batch larger than the data is one line.
    loss_fn = PreferenceLoss.from_params(cfg)  # dpo.loss with beta and its options
    objective = preference_objective(run.process, encode, files.read_jsonl(prepared("train")),
                                     files.read_jsonl(prepared("heldout")), cfg, loss_fn, load_file(REFERENCE),
                                     REFERENCE)
    train_and_save(run, cfg, seed, objective, tokenizer, encode, start=SFT, out=DPO,
                   lives=(live("dpo"), live("dpo_steps")), card=(params, "dpo", prepared("train")))
    run.end()


if __name__ == "__main__":
    with exit_on_user_error("dpo"):
        main()
