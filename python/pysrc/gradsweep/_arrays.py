"""Arrays from any framework, as the Rust extension takes them."""

from __future__ import annotations

from typing import Any

import numpy as np


def matrix(a: Any, dtype: type, name: str) -> np.ndarray:
    """``a`` (NumPy, a torch tensor on any device, JAX, anything
    :func:`numpy.asarray` takes) as a C-contiguous 2-d array of ``dtype``, or a
    ValueError naming ``name``."""
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        a = a.detach().cpu()
    m = np.ascontiguousarray(np.asarray(a), dtype=dtype)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (rows × columns), got shape {m.shape}")
    return m
