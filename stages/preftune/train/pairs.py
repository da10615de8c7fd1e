"""Preference rows as the model sees them: encoded chosen, rejected and mismatched sequences (or an unpaired
row's completion), and their summed response log-probs in length-sorted batches. Both the `reference` stage (once, under the SFT model) and `dpo` use
this; neither the preference losses nor the training loop live here, so editing those never reruns
`reference`. The reference file's key format is defined here too."""

from __future__ import annotations

import torch
from tqdm import tqdm

from ..data.encoding import EVAL_BATCH, Encoder, Sequence, collate, length_batches, to_device
from ..data.formats import is_unpaired
from ..model.logprobs import sequence_logprobs
from ..model.runtime import autocast
from ..pipeline.errors import DataError
from ..pipeline.progress import track

PAIR_KINDS = ("chosen", "rejected", "mismatched")
UNPAIRED_KINDS = ("completion", "mismatched")


def kinds_of(rows: list[dict]) -> tuple[str, ...]:
    """The sequences a set of prepared rows gives: chosen, rejected and mismatched for pairs; completion and
    mismatched for unpaired feedback."""
    return UNPAIRED_KINDS if is_unpaired(rows) else PAIR_KINDS


def reference_key(split: str, kind: str) -> str:
    """Tensor name in data/reference/logps.safetensors: "<split>/<kind>", e.g. "train/chosen"."""
    return f"{split}/{kind}"


def reference_for(reference: dict[str, torch.Tensor], split: str, rows: list[dict], path: str) -> dict[str, torch.Tensor]:
    """The reference log-probs of one split's rows by kind, from the loaded reference file (`path`, for the error):
    a file made from other data is one line, not an index error halfway through training."""
    keys = {kind: reference_key(split, kind) for kind in kinds_of(rows)}
    found = {len(reference[k]) if k in reference else None for k in keys.values()}
    if found != {len(rows)}:
        raise DataError(f"{path}: made from other data ({sorted(found, key=str)} {split} rows, the prepared {split} "
                        f"set has {len(rows)}); run `dvc checkout` or `dvc repro` to bring it in line with the data")
    return {kind: reference[key] for kind, key in keys.items()}


def encode_pairs(encode: Encoder, rows: list[dict]) -> dict[str, list[Sequence]]:
    """The rows' sequences by kind (kinds_of). Mismatched is the prompt of row i with the good answer of row
    i+1 (its chosen answer, or its completion), which KTO uses to estimate KL(policy || reference) without a
    gradient; nobody fitted those to the budget, so the Encoder cuts them without counting."""
    n = len(rows)
    good = "completion" if is_unpaired(rows) else "chosen"
    out = {kind: [encode.row(r, kind) for r in rows] for kind in kinds_of(rows) if kind != "mismatched"}
    out["mismatched"] = [encode(rows[i]["prompt"], rows[(i + 1) % n][good],
                                eos=not rows[(i + 1) % n].get(f"{good}_cut", False), count=False) for i in range(n)]
    return out


@torch.no_grad()
def logprobs_of(model, sequences: list[Sequence], pad_id: int, device, batch_size: int = EVAL_BATCH,
                precision: str = "fp32", desc: str | None = None) -> torch.Tensor:
    """Summed response log-probs of `sequences`, in their order, batched by length; a progress bar with `desc`."""
    model.eval()
    out = torch.zeros(len(sequences))
    batches = length_batches(sequences, batch_size)
    for idx in tqdm(batches, desc=desc, disable=True if desc is None else None, leave=False, unit="batch"):
        with autocast(device, precision):
            sums = sequence_logprobs(model, to_device(collate([sequences[i] for i in idx], pad_id), device))[0]
        out[idx] = sums.float().cpu()
    return out


def reference_tensors(model, rows: dict[str, list[dict]], encode: Encoder, device, precision: str,
                      rank: int = 0, world: int = 1, gather=None, desc: str = "reference log-probs") -> dict | None:
    """The reference file's tensors ("<split>/<kind>": summed response log-probs under `model`) for each split's
    rows. Length-sorted batches, the same whatever the number of ranks: rank r computes batches r, r + N, ... and
    `gather` (accelerate's gather_object) brings them to every rank; None on ranks other than 0."""
    encoded = {split: encode_pairs(encode, split_rows) for split, split_rows in rows.items()}
    pad = encode.tokenizer.pad_token_id
    work = [(split, kind, idx) for split, kinds in encoded.items() for kind, seqs in kinds.items()
            for idx in length_batches(seqs, EVAL_BATCH)]
    mine = [(split, kind, idx, logprobs_of(model, [encoded[split][kind][i] for i in idx], pad, device,
                                           precision=precision).tolist())
            for split, kind, idx in track(work[rank::world], desc, unit="batches", quiet=rank != 0)]
    found = gather(mine) if world > 1 else mine
    if rank != 0:
        return None
    tensors = {reference_key(split, kind): torch.zeros(len(seqs)) for split, kinds in encoded.items()
               for kind, seqs in kinds.items()}
    for split, kind, idx, sums in found:
        tensors[reference_key(split, kind)][idx] = torch.tensor(sums)
    return tensors
