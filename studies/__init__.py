"""Studies: sweeps of training runs, each exported and scored, summarised in one report.

The top layer: imports run ``studies -> export -> train -> ctgen``, never back up.
"""
