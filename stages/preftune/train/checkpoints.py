"""Exact resume of killed training. A training stage saves, at the end of every epoch (and every N optimizer steps
when `checkpoints.every_steps` says so), all that the rest of the run depends on: the model, the optimizer, the lr
schedule, every rank's RNG states (accelerate's save_state; under FSDP2 each rank's shards of the model and the
optimizer, with torch.distributed.checkpoint), where in the epoch it stands with the statistics
summed so far, and the DVCLive folders. A rerun of the stage (`dvc repro` after a kill) loads the latest one, says
so in one line, and continues: same batches, same random draws, same DVCLive steps, so its outputs are byte for
byte those of a run that was never killed.

Checkpoints live in checkpoints/<stage>/<key>/, outside every DVC output (DVC deletes a stage's outputs before it
runs it). The key hashes what the stage depends on as dvc.yaml declares it (each dependency file's bytes, each
params value) and the number of processes, so a checkpoint made with other code, data or params is never used; a
stage deletes the ones with other keys when it starts, and its own when it completes (unless `checkpoints.keep`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import yaml

from ..pipeline.paths import CHECKPOINTS
from . import sharding


def stage_spec(stages: dict, stage: str, params: dict) -> dict:
    """The stage's dvc.yaml definition; for a `foreach` stage (online@round2), its template with ${key} and
    ${item.<field>} filled in as DVC fills them (the items come from params.yaml, as dvc.yaml's foreach says)."""
    if "@" not in stage:
        return stages[stage]
    group, key = stage.split("@", 1)
    template, items = stages[group], params
    for part in stages[group]["foreach"].strip("${} ").split("."):  # foreach: ${online.rounds}
        items = items[part]
    item = items[key]

    def fill(text: str) -> str:
        return re.sub(r"\$\{(key|item\.(\w+))\}", lambda m: key if m.group(1) == "key" else str(item[m.group(2)]),
                      text)

    def filled(value):  # a path, or {path: options} as outs and metrics have
        return fill(value) if isinstance(value, str) else {fill(k): v for k, v in value.items()}

    return {field: [filled(v) for v in values] for field, values in template["do"].items() if isinstance(values, list)}


def inputs_key(stage: str, params: dict, world: int) -> str:
    """A digest of the stage's declared dependencies (files, params values), its launcher and process count."""
    spec = stage_spec(yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"], stage, params)
    digest = hashlib.sha256(json.dumps([stage, params.get("launcher"), world]).encode())
    for dep in sorted(spec.get("deps", [])):
        root = Path(dep)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            digest.update(str(path).encode() + b"\0")
            if path.exists():
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
    for name in spec.get("params", []):
        value = params
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        digest.update(json.dumps([name, value], sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Checkpoints:
    """The checkpoints of one stage's run; the methods that touch files do so on the main process only, except
    save and load, which every rank calls (each rank has its own RNG state)."""

    def __init__(self, stage: str, params: dict, accelerator):
        cfg = params["checkpoints"]
        self.accelerator, self.every_steps, self.keep = accelerator, cfg["every_steps"], cfg["keep"]
        self.root = Path(CHECKPOINTS) / stage
        self.here = self.root / inputs_key(stage, params, accelerator.num_processes)
        if accelerator.is_main_process and self.root.is_dir():
            for other in self.root.iterdir():
                if other != self.here:  # made from other inputs: never usable again
                    shutil.rmtree(other, ignore_errors=True)
        accelerator.wait_for_everyone()
        self.latest = self._latest()
        self.sharded: tuple = ()  # FSDP2's (model, optimizer), which accelerate does not hold

    def track_sharded(self, model, optimizer) -> None:
        """Checkpoint an FSDP2-sharded model and its optimizer too: each rank saves its own shards."""
        self.sharded = (model, optimizer)

    def _latest(self) -> Path | None:
        pointer = self.here / "LATEST"
        if not pointer.is_file():
            return None
        path = self.here / pointer.read_text().strip()
        return path if (path / "position.json").is_file() else None

    def position(self) -> dict | None:
        return json.loads((self.latest / "position.json").read_text()) if self.latest else None

    def restore_live(self, directory: str) -> int | None:
        """Put the checkpoint's copy of a DVCLive folder back; returns the next step to log (None: no checkpoint)."""
        if self.latest is None:
            return None
        if self.accelerator.is_main_process:
            shutil.rmtree(directory, ignore_errors=True)
            shutil.copytree(self.latest / "live" / directory, directory)
        return self.position()["live_steps"][directory]

    def save(self, position: dict, lives: dict) -> None:
        """A new checkpoint of everything the Accelerator prepared or registered (model, optimizer, lr schedule,
        RNG states); then the LATEST pointer moves to it (atomically), then the previous one goes."""
        acc = self.accelerator
        name = f"epoch{position['epoch']:04d}-step{position['step']:07d}"
        path = self.here / name
        acc.save_state(str(path))
        if self.sharded:
            sharding.save_sharded(str(path / "fsdp2"), *self.sharded)
        if acc.is_main_process:
            for directory in lives:
                shutil.copytree(directory, path / "live" / directory, dirs_exist_ok=True)
            # Not sorted: the epoch's totals come back in the order they were first summed, so a resumed epoch
            # logs its metrics in the same order as an uninterrupted one (DVCLive keeps first-logged order).
            (path / "position.json").write_text(json.dumps(
                {**position, "live_steps": {d: live.step for d, live in lives.items()}}))
            tmp = self.here / "LATEST.tmp"
            tmp.write_text(name)
            os.replace(tmp, self.here / "LATEST")
            if self.latest is not None and self.latest != path:
                shutil.rmtree(self.latest, ignore_errors=True)
        acc.wait_for_everyone()
        self.latest = path

    def load(self) -> dict | None:
        """Restore the latest checkpoint into the prepared objects; returns its position (None: start afresh)."""
        if self.latest is None:
            return None
        self.accelerator.load_state(str(self.latest))
        if self.sharded:
            sharding.load_sharded(str(self.latest / "fsdp2"), *self.sharded)
        return self.position()

    def finish(self) -> None:
        """The stage completed: its checkpoints are no longer needed (unless kept)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
            if Path(CHECKPOINTS).is_dir() and not any(Path(CHECKPOINTS).iterdir()):
                Path(CHECKPOINTS).rmdir()
