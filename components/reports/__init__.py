"""Reports layer: searches read back from MLflow, plots, the search report, evaluation figures and the model card."""
