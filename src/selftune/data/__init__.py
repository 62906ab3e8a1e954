"""Curation: which recorded material becomes training data, and how it is tokenized."""
