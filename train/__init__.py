"""Offline training and evaluation: manifests, labels, crop caches, fitting and metrics."""
