"""Features layer: the pretrained backbone, extraction through the content-addressed cache, HDF5 feature files."""
