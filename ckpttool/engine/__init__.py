"""Running real models on their test data: multi-clip TTA of mmaction2 recognisers (metrics live in `metrics`)."""
