"""Metrics from predictions, numpy only (never torch): NTU60 recognition (`ntu`, reading dumps in `predictions`),
KAIST detection (`kaist`, `kaist_io`), and the regression gate (`gate`)."""
