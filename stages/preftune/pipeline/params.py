"""Reading params.yaml: plain nested dicts, as DVC sees them."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from . import cores, numerics, progress, schema
from .errors import ConfigError


class Section(dict):
    """A params section whose missing keys are a one-line ConfigError, not a KeyError traceback; a key that
    params.yaml cannot have (schema.py) is a KeyError: a typo in the code, not in the file."""

    def __init__(self, name: str, values: dict):
        super().__init__(values)
        self.name = name

    def __missing__(self, key):
        where = f"{self.name}.{key}" if self.name else key
        spec = schema.spec_of(self.name)
        if spec is not None and key not in spec:
            raise KeyError(f"{where} is not a params.yaml key (schema.SCHEMA): the code asks for a key no params "
                           "file has")
        raise ConfigError(f"params.yaml: {where} is missing; add it (the committed params.yaml lists every key)")


def load_params(path: str = "params.yaml") -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stage from the repository root") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (seed, data, model, ...)")
    return Section("", params)


def section(params: dict, name: str) -> Section:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: section '{name}' is missing or not a mapping; restore it from the committed params.yaml")
    return Section(name, value)


def _quiet_progress_bars() -> None:
    import huggingface_hub.utils
    import transformers.utils.logging

    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()  # its own switch, read from huggingface_hub's at import


class _HeldLines(logging.Filter):
    """Lines held back until the stage's first log line of any kind, then written just before it: what a stage runs
    on is read beside what it does, and a stage that bad input stops before it logs anything says its one error
    line only (errors.exit_on_user_error prints it, past logging)."""

    def __init__(self, handler: logging.Handler, records: list[logging.LogRecord]):
        super().__init__()
        self.handler, self.records = handler, records

    def filter(self, record: logging.LogRecord) -> bool:
        self.handler.removeFilter(self)
        for held in self.records:
            self.handler.emit(held)
        return True


def _say_with_the_first_line(log: logging.Logger, lines: list[tuple[int, str]]) -> None:
    records = [log.makeRecord(log.name, level, __file__, 0, text, (), None) for level, text in lines
               if log.isEnabledFor(level)]  # rank > 0 logs warnings only
    handlers = logging.getLogger().handlers
    if records and handlers:
        handlers[0].addFilter(_HeldLines(handlers[0], records))


def start_stage(stage: str, description: str, item: str | None = None) -> Section:
    """What every stage does first, in this order:
    1. parse its one option (--params, so tests and users can point it at another file), and for a dvc.yaml
       `foreach` stage the item it runs (`item` names it: online.py round1), kept as the result's `.item`;
    2. log at INFO as `<stage>: message` (rank 0 only), with library chatter below the default level;
    3. load params.yaml and check it whole (schema.check: every key's type and range, then each section's rules),
       so a bad value anywhere stops every stage before it reads any data or model; the warnings of this stage's
       own section are logged;
    4. a stage that computes with torch (numerics.COMPUTING_STAGES) logs what it computes on (numerics.describe:
       the mode pinned before torch loaded, the CPU, torch's capability, the threads; written with the stage's
       first line, so that bad input still gives one line), then holds a core per
       thread, waiting while other stages on this machine hold them (cores.py; a line says so)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if item:
        parser.add_argument(item, help=f"the {item} to run (dvc.yaml passes it)")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun / accelerate launch: one log per launch
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(name)s: %(message)s")
    logging.captureWarnings(True)  # library warnings (e.g. beta = 0) arrive as log lines
    # What the stage says stays; library chatter (accelerate's per-file checkpoint lines, transformers' load
    # reports) goes below the default level.
    for library in ("accelerate", "transformers", "peft", "huggingface_hub"):
        logging.getLogger(library).setLevel(logging.WARNING)
    # Saving a tied-embedding model's checkpoint warns every epoch that the tied copy was left out, as it should be.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stderr.isatty():  # a log file or a pipe: the libraries' progress bars ("Loading weights") are noise
        _quiet_progress_bars()
    progress.STAGE["name"] = stage
    params = load_params(args.params)
    params.item = getattr(args, item) if item else None
    schema.check(params, stage)
    if stage not in numerics.COMPUTING_STAGES:
        return params
    log = logging.getLogger(stage)
    line, warnings = numerics.describe(params["numerics"])
    _say_with_the_first_line(log, [(logging.INFO, line)] + [(logging.WARNING, w) for w in warnings])
    waited = cores.hold(numerics.PINNED.threads, waiting=log.info)
    if waited >= 1:
        log.info("waited %.0f s for free cores", waited)
    return params
