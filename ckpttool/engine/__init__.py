"""The model-evaluation engine: one pipeline for every model family, what differs said by a task adapter.

``adapter`` (the protocol), ``pipeline`` (build → weights → data → views → inference → aggregation → metrics →
dumps), ``runner`` (chunked inference), ``score_cache``, ``dist`` (torchrun), ``evaluate`` (``ckpt eval`` as one
call). Importing this package is cheap: torch and OpenMMLab are imported inside the functions that run models.
"""
