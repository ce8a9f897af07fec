"""The training engine: configs, methods, checkpoints, training, evaluation, distributed runs."""
