"""Run, on every node, the training stage that the head node's `dvc repro` is running: for clusters whose nodes all
run the same command (SkyPilot, a plain `pdsh`), where no node can know which stage comes next (a stage restored
from DVC's run-cache starts no ranks at all).

    launcher: torchrun --nnodes N --nproc_per_node G --rdzv-backend c10d --rdzv-endpoint HEAD:29500 launch/follow.py

On the head, DVC runs `${launcher} stages/<stage>.py`, so the head's ranks receive the stage's script and its
arguments. The other nodes run the same torchrun command with nothing after `launch/follow.py`, in a loop
(launch/README.md); their agents join the head's at the rendezvous, and each rank reads the script through the
store that torchrun already runs for the ranks (whichever node's rank 0 is), then runs it as if it had been started
with it. No process group is made here: the stage makes its own (NCCL on GPUs, gloo on CPU), as under a plain
launcher.
"""

import os
import runpy
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from preftune.pipeline import numerics  # noqa: E402

# This process becomes the stage's, and torch loads below: pin the numerics first, from the params file the
# stage will read (the head's argv names it; the other nodes read params.yaml, and main checks they agree).
numerics.pin(sys.argv[2:])

from torch.distributed import TCPStore  # noqa: E402

KEY = "preftune/follow/argv"


def main() -> None:
    mine = sys.argv[1:]
    store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                     timeout=timedelta(minutes=30))
    if mine:  # the head's ranks (every rank, under srun): all were given the one command DVC ran
        store.set(KEY, "\0".join(mine))
    argv = store.get(KEY).decode().split("\0")
    if mine and mine != argv:
        sys.exit(f"launch/follow.py: rank {os.environ['RANK']} was given {mine}, another node {argv}; start the "
                 "other nodes with nothing after launch/follow.py")
    if numerics.requested(argv[1:]) != numerics.requested(sys.argv[2:]):
        sys.exit(f"launch/follow.py: rank {os.environ['RANK']} pinned its numerics from params.yaml, but the stage "
                 f"reads another params file ({' '.join(argv)}); give every node the same file as params.yaml")
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
