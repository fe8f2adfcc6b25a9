"""Checkpoint surgery: graft (rules → plan → apply → verify) and weight averaging. Torch only inside functions."""
