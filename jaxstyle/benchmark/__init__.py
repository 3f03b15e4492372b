"""Throughput benchmarks of every method, with PyTorch equivalents timed side by side."""
