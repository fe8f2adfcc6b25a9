"""Evaluation: NTU60 recognition metrics (`ntu`), KAIST detection metrics (`kaist`, `kaist_io`), reading
prediction files (`predictions`), the regression gate (`gate`); model runners and TTA live beside them."""
