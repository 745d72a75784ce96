"""MLflow: the store, the experiment, run lifecycle, and the trainer's per-epoch logging."""
