"""Comparison of two checkpoints: tensors and modules (`diff`), and the configs they were trained with (`configdiff`)."""
