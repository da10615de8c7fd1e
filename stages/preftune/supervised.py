"""Supervised fine-tuning: maximise the likelihood of the demonstrated responses (prompt masked)."""

from __future__ import annotations

from .batching import Encoder, Sequence, collate, to_device
from .logprobs import ResponseLogprobs
from .training import Objective, Run, fit


def sft_objective(run: Run, train_seqs: list[Sequence], heldout_seqs: list[Sequence], pad: int) -> Objective:
    """The SFT step for the training loop: the mean negative log-likelihood per response token (EOS included)
    of each global batch, and the same on the held-out sequences at the end of an epoch."""
    def nll(model, sequences):
        sums, _ = model(**to_device(collate(sequences, pad), run.device))
        return -sums.sum()

    def heldout_loss(model) -> dict:
        if not heldout_seqs:
            return {"heldout_loss": None}
        sums = run.evaluate_sums(len(heldout_seqs), 64, lambda idx: {
            "nll": nll(model, [heldout_seqs[i] for i in idx]),
            "tokens": sum(heldout_seqs[i].scored_tokens for i in idx)})
        return {"heldout_loss": sums["nll"] / sums["tokens"]}

    return Objective(lengths=[len(s.ids) for s in train_seqs],
                     weight=lambda idx: sum(train_seqs[i].scored_tokens for i in idx),
                     loss=lambda model, idx: (nll(model, [train_seqs[i] for i in idx]), {}),
                     evaluate=heldout_loss)


def train_sft(run: Run, model, tokenizer, demos: list[dict], heldout: list[dict], cfg: dict, max_length: int,
              seed: int, live=None):
    """Train on (prompt, response) demonstrations; the held-out loss is measured on the held-out rows' good
    answers (chosen, or desirable completions). Returns the last epoch's metrics (with the encoder's truncation counts) and the prepared model."""
    encode = Encoder(tokenizer, max_length)
    train_seqs = [encode.row(d, "response") for d in demos]
    good = "completion" if heldout and "completion" in heldout[0] else "chosen"
    heldout_seqs = [encode.row(r, good) for r in heldout if r.get("label", True)]
    objective = sft_objective(run, train_seqs, heldout_seqs, tokenizer.pad_token_id)
    history, model = fit(run, ResponseLogprobs(model), cfg, objective, seed, "sft", epoch_live=live,
                         show=("train_loss", "heldout_loss"))
    return {**history[-1], **encode.stats()}, model
