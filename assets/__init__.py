"""Keel's software-defined assets, one module per stage."""
