"""Evaluation: test metrics with intervals, the operating point, subgroups, calibration, figures, the model card."""
