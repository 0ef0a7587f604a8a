"""Evaluation: ``ctgen evaluate`` (``evaluate`` and its parts), its report (``report``) and the metrics
(``metrics/``: reconstruction, activity, disentanglement, realism, sharpness, controllability)."""
