"""Checkpoint surgery: module tree, diff, graft, average. Submodules import torch only inside functions."""
