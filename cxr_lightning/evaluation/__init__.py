"""Evaluation: metrics, statistics (bootstrap, DeLong, Holm), calibration, plots and the report of the paper's tables."""
