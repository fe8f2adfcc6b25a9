"""Names shared by the metrics, the engine and the CLI (no imports: the CLI reads them to build its options)."""

# how per-view scores become one score per sample: softmax then mean, mean, element-wise max
AGGREGATES = ("prob", "score", "max")
# KAIST evaluation setups: name -> (height range, occlusion levels), from the MLPD script's KAISTParams
SETUPS = {
    "Reasonable": ((55, 1e5 ** 2), (0, 1)),
    "Reasonable_small": ((50, 75), (0, 1)),
    "Reasonable_occ=heavy": ((50, 1e5 ** 2), (2,)),
    "All": ((20, 1e5 ** 2), (0, 1, 2)),
}
