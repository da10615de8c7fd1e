"""The length rule (length_rule.py) over a dataset: rows in batches, each batch's texts tokenized in one call,
batches fitted side by side in forked worker processes, memory bounded by a window of batches. prepare's fast path;
everything it yields is what fitting one row at a time yields (tests/test_real_lengths.py)."""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterable, Iterator

from ..pipeline.progress import track
from .encoding import Encoder
from .formats import RenderMessages, answer_fields
from .length_rule import PROMPT_CUTS, fit_row
from .pieces import PieceTokenizer

ROWS_PER_BATCH = 256  # rows tokenized in one batched call, and what a worker process fits at a time


def fit_rows(rows: list[dict], encode: Encoder, max_prompt_length: int, truncation: str, render: RenderMessages,
             workers: int = 1, batched: bool = True) -> tuple[list[dict], dict]:
    """Rows that fit encode.max_length (cut as length_rule.py says), and the counts (Fitting, all at once)."""
    fitting = Fitting(encode, max_prompt_length, truncation, render, workers, batched)
    return list(fitting.kept(rows)), fitting.stats


class Fitting:
    """The length rule over a stream of rows: `kept(rows)` yields, in order, the rows that fit (cut as length_rule.py
    says) and adds every row's cuts and drops to `stats`; memory does not grow with the rows.

    The rows go in batches of ROWS_PER_BATCH: each batch's prompts and prompt + answer texts are tokenized in one
    batched call, and every later length of that batch reads those ids (Encoder.batch), so a row that fits is
    tokenized once; where pieces.PieceTokenizer proves it exact for the tokenizer, by the pieces between special
    tokens, so that a message is tokenized once however many texts hold it (`tokenizing` says which);
    `workers` processes fit batches side by side. None of it changes a result: `batched=False`, `workers=1` is the
    one-row-at-a-time path they are tested against."""

    def __init__(self, encode: Encoder, max_prompt_length: int, truncation: str, render: RenderMessages,
                 workers: int = 1, batched: bool = True, rows_per_batch: int = ROWS_PER_BATCH):
        self.encode, self.max_prompt, self.truncation, self.render = encode, max_prompt_length, truncation, render
        self.workers, self.batched, self.rows_per_batch = workers, batched, rows_per_batch
        self.pieces, self.tokenizing = (PieceTokenizer.prove(encode.tokenizer) if batched
                                        else (None, "whole texts, one at a time"))
        self.stats = self._counts(())

    def _counts(self, fields) -> dict:
        return {"max_length": self.encode.max_length, "max_prompt_length": self.max_prompt,
                "truncation": self.truncation, "rows_cut": 0, "prompts_cut": 0, "prompt_tokens_removed": 0,
                **PROMPT_CUTS, **{f"{f}_cut": 0 for f in fields}, **{f"{f}_tokens_removed": 0 for f in fields},
                "dropped_answer_too_long": 0, "dropped_nothing_left": 0, "dropped_identical_after_cut": 0}

    def kept(self, rows: Iterable[dict]) -> Iterator[dict]:
        batches = _batches(rows, self.rows_per_batch)
        first = next(batches, None)
        if first is None:
            return
        fields = answer_fields(first[0])
        stats = self.stats = self._counts(fields)
        totals = [key for key in stats if key not in ("max_length", "max_prompt_length", "truncation")]
        job = _FitJob(fields, self.encode, self.max_prompt, self.truncation, self.render, totals, self.batched,
                      self.pieces)
        for fitted in track(_map(job, itertools.chain([first], batches), self.workers),
                            f"fit rows to max_length ({self.rows_per_batch} a batch)", unit="batches"):
            for row, counts in fitted:  # a row's counts join the totals as kept, or as dropped
                for key in totals:
                    if row is not None or key.startswith("dropped_"):
                        stats[key] += counts[key]
                if row is not None:
                    yield row


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    rows = iter(rows)
    while batch := list(itertools.islice(rows, size)):
        yield batch


class _FitJob:
    """Fitting one batch of rows: what a worker process runs (forked, so the tokenizer and the renderer it was
    given are the parent's, with nothing pickled but the rows)."""

    def __init__(self, fields, encode, max_prompt, truncation, render, totals, batched, pieces):
        self.fields, self.encode, self.max_prompt, self.truncation = fields, encode, max_prompt, truncation
        self.render, self.totals, self.batched, self.pieces = render, totals, batched, pieces

    def __call__(self, rows: list[dict]) -> list[tuple[dict | None, dict]]:
        texts = [r["prompt"] for r in rows] + [r["prompt"] + r[f] for r in rows for f in self.fields]
        out = []
        with self.encode.batch(texts if self.batched else [], self.pieces and self.pieces.tokenize):
            for row in rows:
                counts = dict.fromkeys(self.totals, 0)
                out.append((fit_row(row, self.fields, self.encode, self.max_prompt, self.truncation, self.render,
                                 counts), counts))
        if self.pieces:
            self.pieces.forget()  # a batch's pieces only: memory does not grow with the rows
        return out


_JOB: _FitJob | None = None  # the job a forked worker runs


def _run_job(rows: list[dict]):
    return _JOB(rows)


def _map(job: _FitJob, batches: Iterator[list[dict]], workers: int) -> Iterator[list]:
    """job(batch) for each batch, in order: here, or in `workers` forked processes, a few batches per worker in
    flight at a time (so that memory holds a window of the rows, not all of them)."""
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(job, batches)
        return
    global _JOB
    _JOB, was = job, os.environ.get("TOKENIZERS_PARALLELISM")
    # The parent's tokenizer may have used its threads already; forked workers each use one core instead.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            while window := list(itertools.islice(batches, 4 * workers)):
                yield from pool.map(_run_job, window)
    finally:
        _JOB = None
        if was is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = was
