"""Supervised fine-tuning: maximise the likelihood of the demonstrated responses (prompt masked)."""

from __future__ import annotations

from ..data.encoding import collate, to_device
from ..model.logprobs import ResponseLogprobs
from .batches import evaluate_sums
from .loop import Objective


class SFTObjective(Objective):
    """The mean negative log-likelihood per response token (EOS included) of each global batch, on the (prompt,
    response) demonstrations; at the end of an epoch the same on the held-out rows' good answers (chosen, or
    desirable completions)."""

    name = "sft"
    show = ("train_loss", "heldout_loss")
    batch_fits_data = False  # a user file's few demonstrations train in one smaller batch, as they always have

    def __init__(self, process, encode, train, heldout, cfg):
        super().__init__(process, encode, train, heldout, cfg)
        good = "completion" if heldout and "completion" in heldout[0] else "chosen"
        self._use([encode.row(d, "response") for d in train], [encode.row(r, good) for r in heldout if r.get("label", True)])

    @classmethod
    def on_sequences(cls, process, sequences: list, cfg: dict, pad: int) -> "SFTObjective":
        """The same objective on already-encoded training sequences, with no held-out set: what the benchmarks
        time at exact lengths."""
        objective = cls.__new__(cls)
        objective.process, objective.cfg, objective.pad = process, cfg, pad
        objective._use(sequences, [])
        return objective

    def _use(self, train: list, heldout: list) -> None:
        self.train, self.heldout, self.lengths = train, heldout, [len(s.ids) for s in train]

    def wrap(self, model):
        return ResponseLogprobs(model)

    def weight(self, idx):
        return sum(self.train[i].scored_tokens for i in idx)

    def nll(self, model, sequences):
        sums, _ = model(**to_device(collate(sequences, self.pad), self.process.device))
        return -sums.sum()

    def loss(self, model, idx):
        return self.nll(model, [self.train[i] for i in idx]), {}

    def evaluate(self, model):
        if not self.heldout:
            return {"heldout_loss": None}
        sums = evaluate_sums(self.process, len(self.heldout), lambda idx: {
            "nll": self.nll(model, [self.heldout[i] for i in idx]),
            "tokens": sum(self.heldout[i].scored_tokens for i in idx)})
        return {"heldout_loss": sums["nll"] / sums["tokens"]}
