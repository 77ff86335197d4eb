"""mrcnet/eval."""
