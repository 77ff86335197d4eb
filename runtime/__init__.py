"""MRC-Net Edge runtime: torch-free preprocessing, renderer, backends and pipeline."""
