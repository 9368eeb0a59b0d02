"""Column names of the tables that cross stage boundaries: truth, prediction and submission tables.

Dataset columns come from the profile; these are the toolkit's own names, spelled once."""

from __future__ import annotations

TRUTH_FILE = "test_truth.parquet"
TRUTH_ID = "row_id"
TRUTH_CLICK = "is_clicked"
TRUTH_INSTALL = "is_installed"
TRUTH_P_INSTALL = "p_install"  # the true probability, where the data was generated

PRED_ID = "row_id"
PRED_SPLIT = "split"
PRED_P = "p"

LIKE = "is_like"  # clicked OR installed: the two-step model's first target, a label column of the feature tables
