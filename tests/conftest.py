"""Shared test set-up. Slow and GPU tests are deselected by pyproject's addopts."""

from __future__ import annotations

import os

# Keep test runs on 2 cores predictable.
os.environ.setdefault("OMP_NUM_THREADS", "2")
