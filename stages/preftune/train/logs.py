"""A training run's DVCLive logs: one layout for every stage (train/loss, heldout/loss, ...), written by the main
process only, continued from a checkpoint's when a killed run resumes, and nothing that is not a pure function of
the inputs (no timestamps, no dvc.yaml of their own, no experiment commits)."""

from __future__ import annotations


class Logs:
    """The DVCLive loggers a run opens (on the main process; elsewhere loggers that do nothing), closed together
    at the end with the run's summary. `checkpoints` (checkpoints.Checkpoints), when given, restores a resumed
    run's logs and steps."""

    def __init__(self, is_main: bool, checkpoints=None):
        self.is_main, self.checkpoints = is_main, checkpoints
        self.open_loggers: dict = {}  # directory -> DVCLive logger, in the order opened

    def open(self, directory: str):
        step = self.checkpoints.restore_live(directory) if self.checkpoints else None
        if not self.is_main:
            return _Silent()
        live = live_logger(directory, resume=step is not None)
        if step is not None:
            live.step = step
        self.open_loggers[directory] = live
        return live

    def end(self, summary: dict | None = None) -> None:
        """`summary` (None values left out) joins the first logger's metrics.json beside the last epoch's metrics;
        every logger is closed."""
        for i, live in enumerate(self.open_loggers.values()):
            if summary and i == 0:
                log_metrics(live, summary)
            live.end()


class _Silent:
    def log_metric(self, *args, **kwargs) -> None:
        pass

    def next_step(self) -> None:
        pass

    def end(self) -> None:
        pass


def live_name(metric: str) -> str:
    """An epoch metric's DVCLive name: the split as a folder (train_loss -> train/loss, heldout_loss ->
    heldout/loss), the same in every stage, so plots and `dvc plots diff` read every stage alike."""
    for split in ("train", "heldout"):
        if metric.startswith(f"{split}_"):
            return f"{split}/{metric[len(split) + 1:]}"
    return metric


def live_logger(directory: str, resume: bool = False):
    """A DVCLive logger that writes metrics.json and plots/*.tsv under `directory` and nothing else:
    no dvc.yaml of its own, no experiment commits, no timestamps (outputs stay a pure function of inputs)."""
    from dvclive import Live

    return Live(directory, dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False, resume=resume)


def log_metrics(live, metrics: dict, prefix: str = "") -> None:
    for name, value in metrics.items():
        if value is not None:
            live.log_metric(f"{prefix}{name}", round(float(value), 6))
