"""What every stage shares: params and their schema, paths, errors, files, numerics, cores, progress, model cards."""
