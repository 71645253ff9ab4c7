"""gradsweep from Python: certified, mergeable statistics of SGD's diffusion matrix.

The numbers come from gradsweep's Rust science core (no second
implementation): a sketch built here has the bytes a gradsweep worker would
send, and :func:`analyze_grads` returns what ``gradsweep analyze grads
--format json`` prints.

Arrays may be anything :func:`numpy.asarray` accepts: NumPy arrays, torch
tensors (on the CPU, detached), JAX arrays.

Example::

    import numpy as np, gradsweep
    g = np.random.default_rng(0).standard_normal((512, 100)).astype(np.float32)
    sk = gradsweep.FdSketch(d=100, ell=32)
    sk.insert(g[:256]); other = gradsweep.FdSketch(100, 32); other.insert(g[256:])
    sk.merge(other)
    lo, hi = sk.rank()          # certified bracket at the paper's threshold
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from . import _gradsweep
from ._arrays import matrix as _matrix
from .worker import Run, RunStopped, Worker

__all__ = ["FdSketch", "Run", "RunStopped", "Worker", "analyze_grads", "analyze_trajectory", "__version__"]

__version__: str = _gradsweep.__version__




class FdSketch:
    """A Frequent Directions sketch of per-sample gradients.

    Rows of dimension ``d`` go in by blocks; the sketch keeps ``ell``
    directions plus the exact mean and trace, so the spectrum of
    ``D = (1/n) Σ gᵢgᵢᵀ − ḡḡᵀ`` is known within a certified error. Sketches of
    disjoint samples merge, in any order, into the sketch of all of them.
    """

    __slots__ = ("_inner",)

    def __init__(self, d: int, ell: int) -> None:
        self._inner = _gradsweep.FdSketch(d, ell)

    @classmethod
    def _wrap(cls, inner: Any) -> "FdSketch":
        s = cls.__new__(cls)
        s._inner = inner
        return s

    @property
    def d(self) -> int:
        """The dimension of the rows (the number of parameters)."""
        return self._inner.d

    @property
    def ell(self) -> int:
        """The number of directions the sketch keeps."""
        return self._inner.ell

    @property
    def count(self) -> int:
        """The number of rows (samples) inserted so far."""
        return self._inner.count

    def insert(self, block: Any) -> None:
        """Add an ``(n, d)`` block of per-sample gradients (one row per sample).

        Values are rounded to float32, as workers send them; NaN or infinite
        values are refused with their row and column.
        """
        self._inner._insert_f32(_matrix(block, np.float32, "block"))

    def merge(self, other: "FdSketch") -> None:
        """Add the sketch of other samples (same ``d`` and ``ell``)."""
        self._inner.merge(other._inner)

    def eigenvalues(self) -> np.ndarray:
        """The sketched eigenvalues of D, descending (certified lower ends)."""
        return self._inner.eigenvalues()

    def rank(self, relative: float | None = None, absolute: float | None = None) -> tuple[int, int]:
        """The certified bracket ``(lo, hi)`` of D's numerical rank.

        Without arguments at the paper's threshold ``λ_max·d·ε_f32``; with
        ``relative`` at that fraction of λ_max; with ``absolute`` at that
        eigenvalue. When ``lo < hi`` the rank is not resolved by this sketch:
        a larger ``ell`` narrows the bracket. Never a single number it is not.
        """
        return self._inner.rank(relative, absolute)

    def spectrum(self, relative: Sequence[float] = (), absolute: Sequence[float] = ()) -> dict[str, Any]:
        """Every spectral statistic of D (as ``gradsweep analyze grads`` reports
        its ``spectrum``), with ranks at the given extra thresholds."""
        return json.loads(self._inner._spectrum_json(list(relative), list(absolute)))

    def to_bytes(self) -> bytes:
        """The sketch in the wire format gradsweep workers send."""
        return self._inner.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes, d: int | None = None) -> "FdSketch":
        """A sketch from :meth:`to_bytes` or a worker's probe, checked (version,
        CRC, shapes, finite values; with ``d``, its dimension)."""
        return cls._wrap(_gradsweep.FdSketch.from_bytes(data, d))

    def __repr__(self) -> str:
        return f"FdSketch(d={self.d}, ell={self.ell}, count={self.count})"


def analyze_grads(
    grads: Any,
    sketch_rank: int = 256,
    exact_max_dim: int = 4096,
    relative: Sequence[float] = (),
    absolute: Sequence[float] = (),
) -> dict[str, Any]:
    """The spectrum of D for an ``(n, d)`` matrix of per-sample gradients.

    The same dict ``gradsweep analyze grads --format json`` prints for the
    same matrix and options: the exact dense path for ``d ≤ exact_max_dim``,
    otherwise a sketch of ``sketch_rank`` directions with certified brackets.
    """
    return json.loads(
        _gradsweep._analyze_grads_json(
            _matrix(grads, np.float64, "grads"), sketch_rank, exact_max_dim, list(relative), list(absolute)
        )
    )


def analyze_trajectory(
    trajectory: Any,
    projections: int = 8,
    seed: int = 0,
    max_lag: int = 64,
    psd_window: int = 64,
) -> dict[str, Any]:
    """Drift statistics of a ``(T, d)`` trajectory (weights or projections).

    The same dict ``gradsweep analyze trajectory --format json`` prints:
    area-enclosing rates and cycling frequencies (zero under detailed
    balance), MSD, autocorrelation, the Welch spectrum, and warnings about
    what makes them less trustworthy than they look.
    """
    return json.loads(
        _gradsweep._analyze_trajectory_json(
            _matrix(trajectory, np.float64, "trajectory"), projections, seed, max_lag, psd_window
        )
    )
