"""Processed datasets, chat preparation, hidden-state sources, packing and loading."""
