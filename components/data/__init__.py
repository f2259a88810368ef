"""Data layer: image files decoded alike everywhere, the SPLIT/CLASS dataset on disk, augmented views, demo data."""
