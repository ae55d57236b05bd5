"""Cross-validated evaluation of cold-start models: metrics, user splits, the CV stage."""
