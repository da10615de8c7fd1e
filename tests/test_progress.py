"""pipeline/progress.py: off a terminal (a dvc repro log), a long loop says how far it is, its pace and the time
left, under the stage's name."""

import logging

from preftune.pipeline import progress


def test_off_a_terminal_a_loop_logs_its_progress(caplog, monkeypatch):
    monkeypatch.setitem(progress.STAGE, "name", "reference")
    with caplog.at_level("INFO", logger="reference"):
        assert list(progress.track(range(4), "reference log-probs", unit="batches", every=0)) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records if r.name == "reference"]
    assert len(lines) == 4 and lines[1].startswith("reference log-probs: 2/4 batches, ")
    assert lines[1].endswith(" left") and "about" in lines[1]
    assert lines[-1].startswith("reference log-probs: 4/4 batches")


def test_quiet_and_unknown_totals(caplog, monkeypatch):
    monkeypatch.setitem(progress.STAGE, "name", "prepare")
    with caplog.at_level(logging.INFO, logger="prepare"):
        assert list(progress.track(iter("ab"), "fit rows", unit="batches", every=0)) == ["a", "b"]
        assert list(progress.track(range(3), "quiet", every=0, quiet=True)) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "prepare"]
    assert lines[0].startswith("fit rows: 1 batches, ") and "left" not in lines[0] and len(lines) == 2
