"""Feedback loop: new ratings become immutable, DVC-tracked batches that ``ingest`` merges in."""
