"""Benchmarks, each measured side by side with its reference in one run.

``python -m dyntemp bench loss|augment|train``; each submodule has ``main(argv) -> int``.
"""
