//! The extension module of the `gradsweep` Python package: the science
//! core's Frequent Directions sketch and its statistics, for models written
//! in PyTorch, JAX or NumPy. Nothing is implemented twice: every number
//! comes from `gradsweep-shared`, so a sketch built in Python has the bytes
//! a Rust worker would send, and `analyze_grads` returns what `gradsweep
//! analyze grads --format json` prints.
//!
//! The Python layer (`python/pysrc/gradsweep/__init__.py`) turns any array
//! (NumPy, torch, JAX: anything `numpy.asarray` takes) into a C-contiguous
//! float32 or float64 matrix before it reaches this module; heavy numerics
//! run with the GIL released.
//!
//! # Layout
//! * [`FdSketch`] — the sketch: insert blocks of per-sample gradients, merge, eigenvalues, certified ranks,
//!   the wire encoding.
//! * [`worker`] — the Python worker: gradsweep's worker with an executor that calls the user's `train(run)`.
//! * [`analyze_grads`], [`analyze_trajectory`] — the statistics of `gradsweep analyze`, as JSON text the
//!   Python layer loads into dicts.

pub mod worker;

use gradsweep_shared::analyze::{GradsOptions, TrajectoryOptions};
use gradsweep_shared::npy::Array2;
use gradsweep_shared::stats::{Bracket, RankThresholds, SpectrumStats};
use numpy::{PyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A Python `ValueError` carrying `e`'s message.
pub(crate) fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Refuses a row-major block with `cols` columns holding a NaN or an
/// infinity, naming `what` and where: "{what} at row R, column C".
pub(crate) fn all_finite<T: Copy + Into<f64>>(data: &[T], cols: usize, what: &str) -> PyResult<()> {
    match data.iter().position(|&v| !v.into().is_finite()) {
        Some(i) => Err(value_error(format!("{what} at row {}, column {}", i / cols.max(1), i % cols.max(1)))),
        None => Ok(()),
    }
}

/// The thresholds a caller passed (fractions of λ_max, absolute values),
/// checked as the CLI checks them.
fn thresholds(relative: Vec<f64>, absolute: Vec<f64>) -> PyResult<RankThresholds> {
    let th = RankThresholds { relative, absolute };
    th.validate().map_err(value_error)?;
    Ok(th)
}

/// A Frequent Directions sketch of per-sample gradients `g` (rows of
/// dimension `d`, keeping `ell` directions), with the exact mean and trace,
/// so that the spectrum of `D = (1/n) Σ gᵢgᵢᵀ − ḡḡᵀ` is known within a
/// certified error. Sketches of disjoint samples merge.
#[pyclass(module = "gradsweep._gradsweep")]
pub struct FdSketch {
    inner: gradsweep_shared::sketch::FdSketch,
}

#[pymethods]
impl FdSketch {
    /// An empty sketch of dimension `d` keeping `ell` directions.
    #[new]
    fn new(d: usize, ell: usize) -> PyResult<Self> {
        if d == 0 || ell == 0 {
            return Err(value_error(format!("FdSketch needs d ≥ 1 and ell ≥ 1, got d = {d}, ell = {ell}")));
        }
        Ok(FdSketch { inner: gradsweep_shared::sketch::FdSketch::new(d, ell) })
    }

    /// Adds the rows of a C-contiguous float32 matrix of shape `(n, d)`.
    fn _insert_f32(&mut self, py: Python<'_>, block: PyReadonlyArray2<'_, f32>) -> PyResult<()> {
        let (rows, cols) = (block.shape()[0], block.shape()[1]);
        if cols != self.inner.dim() {
            return Err(value_error(format!(
                "a block of {rows} × {cols}: the sketch's rows have d = {}",
                self.inner.dim()
            )));
        }
        let data = block.as_slice().map_err(value_error)?;
        all_finite(data, cols, "non-finite value")?;
        let inner = &mut self.inner;
        py.detach(|| inner.insert_block(data));
        Ok(())
    }

    /// Adds another sketch of the same `d` and `ell` (other samples).
    fn merge(&mut self, py: Python<'_>, other: PyRef<'_, FdSketch>) -> PyResult<()> {
        let (inner, other) = (&mut self.inner, &other.inner);
        py.detach(|| inner.merge(other)).map_err(value_error)
    }

    /// The dimension `d` of the rows.
    #[getter]
    fn d(&self) -> usize {
        self.inner.dim()
    }

    /// The directions `ell` the sketch keeps.
    #[getter]
    fn ell(&self) -> usize {
        self.inner.ell()
    }

    /// The number of rows (samples) inserted.
    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }

    /// The eigenvalues of the sketched `D`, descending: certified lower ends
    /// (each true eigenvalue lies within `eig_error` above its own, see
    /// `spectrum()`).
    fn eigenvalues<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        let inner = &self.inner;
        let values = py.detach(|| inner.eigenvalues());
        PyArray1::from_vec(py, values)
    }

    /// Every spectral statistic of `D` (the `spectrum` of `gradsweep analyze
    /// grads --format json`) as JSON text, with ranks at the given thresholds.
    fn _spectrum_json(&self, py: Python<'_>, relative: Vec<f64>, absolute: Vec<f64>) -> PyResult<String> {
        let th = thresholds(relative, absolute)?;
        let inner = &self.inner;
        let stats = py.detach(|| SpectrumStats::from_sketch_with(inner, &th));
        serde_json::to_string(&stats).map_err(value_error)
    }

    /// The certified bracket `(lo, hi)` of the numerical rank: at the
    /// paper's threshold λ_max·d·ε_f32 without arguments, at a fraction of
    /// λ_max with `relative`, or at an eigenvalue with `absolute`.
    #[pyo3(signature = (relative = None, absolute = None))]
    fn rank(&self, py: Python<'_>, relative: Option<f64>, absolute: Option<f64>) -> PyResult<(u64, u64)> {
        let th = thresholds(relative.into_iter().collect(), absolute.into_iter().collect())?;
        if relative.is_some() && absolute.is_some() {
            return Err(value_error("give `relative` or `absolute`, not both"));
        }
        let inner = &self.inner;
        let stats = py.detach(|| SpectrumStats::from_sketch_with(inner, &th));
        let b: &Bracket = match (stats.ranks_relative.first(), stats.ranks_absolute.first()) {
            (Some((_, b)), _) | (None, Some((_, b))) => b,
            (None, None) => &stats.rank,
        };
        Ok((b.lo as u64, b.hi as u64))
    }

    /// The sketch in the wire format workers send (versioned,
    /// little-endian, CRC-32 protected).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.encode())
    }

    /// A sketch from `to_bytes` (or a worker's probe), checked: version,
    /// CRC, shapes, finite values; with `d`, its dimension too.
    #[staticmethod]
    #[pyo3(signature = (data, d = None))]
    fn from_bytes(data: &[u8], d: Option<usize>) -> PyResult<Self> {
        let inner = gradsweep_shared::sketch::FdSketch::decode(data, d).map_err(value_error)?;
        Ok(FdSketch { inner })
    }

    fn __repr__(&self) -> String {
        format!("FdSketch(d={}, ell={}, count={})", self.inner.dim(), self.inner.ell(), self.inner.count())
    }
}

/// A row-major `(rows, cols)` matrix of f64 as the analysis reads it.
fn matrix(a: &PyReadonlyArray2<'_, f64>) -> PyResult<Array2> {
    let (rows, cols) = (a.shape()[0], a.shape()[1]);
    let data = a.as_slice().map_err(value_error)?.to_vec();
    all_finite(&data, cols, "non-finite value")?;
    Ok(Array2 { rows, cols, data, was_f32: false })
}

/// `gradsweep analyze grads --format json` of an `(n, d)` float64 matrix
/// of per-sample gradients, as JSON text.
#[pyfunction]
fn _analyze_grads_json(
    py: Python<'_>,
    grads: PyReadonlyArray2<'_, f64>,
    sketch_rank: usize,
    exact_max_dim: usize,
    relative: Vec<f64>,
    absolute: Vec<f64>,
) -> PyResult<String> {
    let a = matrix(&grads)?;
    let th = thresholds(relative, absolute)?;
    let opts = GradsOptions { sketch_rank, exact_max_dim };
    let report = py.detach(|| gradsweep_shared::analyze::analyze_grads(&a, opts, &th)).map_err(value_error)?;
    serde_json::to_string(&report).map_err(value_error)
}

/// `gradsweep analyze trajectory --format json` of a `(T, d)` float64
/// matrix (weights or projections over time), as JSON text.
#[pyfunction]
fn _analyze_trajectory_json(
    py: Python<'_>,
    trajectory: PyReadonlyArray2<'_, f64>,
    projections: usize,
    seed: u64,
    max_lag: usize,
    psd_window: usize,
) -> PyResult<String> {
    if !(2..=gradsweep_shared::spec::MAX_PROJECTIONS as usize).contains(&projections) {
        return Err(value_error(format!(
            "projections must be in 2..={}, got {projections}",
            gradsweep_shared::spec::MAX_PROJECTIONS
        )));
    }
    if !gradsweep_shared::trajectory::valid_psd_window(psd_window) {
        return Err(value_error(format!("psd_window must be 0 or a power of two in 8..=4096, got {psd_window}")));
    }
    let a = matrix(&trajectory)?;
    if a.rows < 2 || a.cols == 0 {
        return Err(value_error(format!(
            "a trajectory of {} points × {} columns: needs at least 2 points",
            a.rows, a.cols
        )));
    }
    let opts = TrajectoryOptions { projections, seed, max_lag, batches: 10, psd_window };
    let report = py.detach(|| gradsweep_shared::analyze::analyze_trajectory(&a, opts));
    serde_json::to_string(&report).map_err(value_error)
}

/// The module: `gradsweep._gradsweep`.
#[pymodule]
fn _gradsweep(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FdSketch>()?;
    m.add_class::<worker::RunHandle>()?;
    m.add_function(wrap_pyfunction!(worker::_serve, m)?)?;
    m.add("RunStopped", m.py().get_type::<worker::RunStopped>())?;
    m.add_function(wrap_pyfunction!(_analyze_grads_json, m)?)?;
    m.add_function(wrap_pyfunction!(_analyze_trajectory_json, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
