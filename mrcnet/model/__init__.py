"""mrcnet/model."""
