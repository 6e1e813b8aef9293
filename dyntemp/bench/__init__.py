"""Benchmarks, each measured side by side with its reference in one run.

``python -m dyntemp bench loss|augment|train|gpu``; each submodule has ``main(argv) -> int``.
``gpu`` is the GPU path end to end (views, loss, training, NCCL) in one command.
"""
