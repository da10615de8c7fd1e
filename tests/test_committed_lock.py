"""The promise of the committed results: a fresh clone's `dvc repro` of the default pipeline, on this machine,
writes the committed dvc.lock byte for byte (every output's hash, every metric file kept in git).

The committed lock was made in portable numerics (numerics.py) on one x86-64 CPU; CI runs this on whatever
x86-64 machine it gets, Intel or AMD, AVX2 or AVX-512. A failure lists the outputs whose hashes moved: a change of
code or params that was committed without rerunning `dvc repro` (bash setup.sh repro), or a numerics leak to fix.
"""

import pytest
import yaml

from dvc_helpers import ROOT, clone_working_tree, dvc, output, stages_run

pytestmark = pytest.mark.slow


def hashes(lock_text: str) -> dict[str, str]:
    lock = yaml.safe_load(lock_text)
    return {f"{stage}: {out['path']}": out["md5"] for stage, entry in lock["stages"].items()
            for out in entry.get("outs", [])}


def test_a_fresh_clone_reproduces_the_committed_lock(tmp_path):
    committed = (ROOT / "dvc.lock").read_text()
    repo = clone_working_tree(tmp_path / "fresh")
    repro = dvc("repro", cwd=repo, check=False)
    assert repro.returncode == 0, output(repro)
    assert stages_run(repro), "nothing ran: the clone had outputs already"
    fresh = (repo / "dvc.lock").read_text()
    moved = {k: (v, hashes(fresh).get(k)) for k, v in hashes(committed).items() if hashes(fresh).get(k) != v}
    assert moved == {}, f"outputs whose hash is not the committed one (committed, fresh): {moved}"
    assert fresh == committed  # and the rest of the file: deps, params
