"""Inference engines behind one small Protocol (see :mod:`selftune.engines.base`)."""
