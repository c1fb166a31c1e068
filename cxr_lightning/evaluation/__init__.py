"""Evaluation: metrics, the predictions file, patient bootstrap, DeLong (with Holm), calibration, plots and the report of the paper's tables."""
