"""Datasets: raw readers, the preprocessing pipeline and the dataset artifact."""
