"""Benchmarks, run as scripts (``python bench/inference.py``); not part of the installed node."""
