"""Reading params.yaml: plain nested dicts, as DVC sees them."""

from __future__ import annotations

import argparse

import yaml

from .errors import ConfigError


class Section(dict):
    """A params section whose missing keys are a one-line ConfigError, not a KeyError traceback."""

    def __init__(self, name: str, values: dict):
        super().__init__(values)
        self.name = name

    def __missing__(self, key):
        where = f"{self.name}.{key}" if self.name else key
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


def stage_args(description: str) -> argparse.Namespace:
    """Every stage takes the same one option, so tests and users can point it at another params file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser.parse_args()
