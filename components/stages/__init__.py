"""One entry module per pipeline stage: what `ffx`, `dvc repro` and the Prefect flow call. Each imports only its
stage's code, so that DVC re-runs a stage only when that code changes."""
