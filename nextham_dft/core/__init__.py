"""Canonical core: structure, basis, block-sparse H(R)/S(R), k-space. No file formats, no models."""
