"""A Python worker for the PyTorch small-lenet: ``python3
examples/pytorch/worker.py --coordinator HOST:PORT [--slots N]`` joins a sweep
of ``examples/pytorch/grid.toml`` (trainer ``python:lenet:train``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradsweep.worker  # noqa: E402
import lenet  # noqa: E402

if __name__ == "__main__":
    gradsweep.worker.main(lenet.train)
