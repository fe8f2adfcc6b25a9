"""What is in a checkpoint: module tree, value statistics, training state (optimizer, schedulers, logs)."""
