"""Calibration, ensembling, submission files and reports."""
