"""mmengine work_dirs: the checkpoints of a run with their logged validation metrics (`runs`)."""
