"""A user's mmdet3d project (loaded through `custom_imports`): CenterPoint with a BEV map head and per-task
global context attention."""
from .detector import BEVMapHead, CenterPointMapGCA, TaskGCA

__all__ = ["BEVMapHead", "CenterPointMapGCA", "TaskGCA"]
