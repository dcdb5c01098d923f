"""Ingest and split: from raw files to the leak-free split, the shortcut check and the data report."""
