"""The ffx library, in layers that import downward only: base (config, errors, files, runtime, tracking at this
level) <- data <- features <- search and model <- reports <- stages (one entry module per pipeline stage)."""
