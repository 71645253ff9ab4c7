"""A Python worker for the NumPy MLP: ``python3 examples/numpy/worker.py
--coordinator HOST:PORT [--slots N] [--name NAME]`` joins a sweep of
``examples/numpy/grid.toml`` (trainer ``python:mlp:train``)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradsweep.worker  # noqa: E402
import mlp  # noqa: E402

if __name__ == "__main__":
    gradsweep.worker.main(mlp.train)
