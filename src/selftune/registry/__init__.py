"""Versions, the serving alias and atomic artifacts."""
