"""What the stored features say about the data: label issues, near-duplicates and leaks, outliers, drift (cleanlab)."""
