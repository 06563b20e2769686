"""Optimizers as update formulas, and learning-rate schedules."""
