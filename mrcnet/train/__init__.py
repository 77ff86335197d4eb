"""mrcnet/train."""
