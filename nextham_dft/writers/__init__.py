"""Writers of canonical outputs (band files, plots, HDF5); code-specific writers live in adapters."""
