"""Training: the one loop, the objectives and their losses, the reference file, checkpoints, sharding."""
