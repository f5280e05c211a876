"""Training data: readers for the real formats and the collators that make features and batches."""

from .collate import (
    IGNORE_INDEX,
    align_labels,
    classification_features,
    feature_lengths,
    ner_features,
    pad_batch,
    qa_features,
    span_labels,
)
from .readers import DataError, read_conll, read_records, read_squad, read_text_label, read_texts

__all__ = [
    "DataError",
    "IGNORE_INDEX",
    "align_labels",
    "classification_features",
    "feature_lengths",
    "ner_features",
    "pad_batch",
    "qa_features",
    "read_conll",
    "read_records",
    "read_squad",
    "read_text_label",
    "read_texts",
    "span_labels",
]
