"""Building a bundle from labelled data: paper A's classifier recipe, detector calibration,
and readers for the user's CSV / JSONL / parquet files."""

from silentwatch.monitor.training.train import (
    TrainResult,
    check_head_labels,
    fit_classifier,
    train_bundle,
)

__all__ = ["TrainResult", "check_head_labels", "fit_classifier", "train_bundle"]
