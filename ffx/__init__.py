"""ffx: fast feature extraction: a thin CLI over `components`."""
