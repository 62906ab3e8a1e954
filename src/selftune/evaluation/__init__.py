"""Held-out, regression and probe sets; the gate."""
