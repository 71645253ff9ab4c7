//! Frequent Directions sketches of per-sample gradients.
//!
//! A [`FdSketch`] summarises the rows `g₁ … g_n` (per-sample gradients,
//! *uncentred*) of a matrix `A` by a small matrix `B` of at most `2ℓ` rows
//! and a scalar `Δ` such that
//!
//! ```text
//! 0 ⪯ AᵀA − BᵀB ⪯ Δ·I        (the certificate)
//! ```
//!
//! Alongside it keeps, exactly, the count `n`, the sum `Σg` and `Σ‖g‖²`.
//! The diffusion matrix `D = (1/n) AᵀA − ḡḡᵀ` is then approximated by
//! `D̂ = (1/n) BᵀB − ḡḡᵀ` with `D − D̂ = (1/n)(AᵀA − BᵀB)`, so every
//! eigenvalue satisfies `λᵢ(D̂) ≤ λᵢ(D) ≤ λᵢ(D̂) + Δ/n` (Weyl), and
//! `tr D = Σ‖g‖²/n − ‖ḡ‖²` is exact. Sketching raw rows and centring
//! through the exact `n` and `Σg` makes sketches of disjoint sample sets
//! merge into the sketch of their union ([`FdSketch::merge`]).
//!
//! Rows can travel as f16 ([`FdSketch::round_rows_to_f16`]): each row is
//! scaled by a power of two and rounded to half precision, which halves the
//! payload. The rounding `E = B − B̃` is measured exactly, and
//! `η = 2‖B‖_F‖E‖_F + ‖E‖_F²` bounds `‖BᵀB − B̃ᵀB̃‖₂`, so the certificate
//! becomes `−s·I ⪯ AᵀA − B̃ᵀB̃ ⪯ Δ·I` with `η` added to both the lower
//! slack `s` and `Δ`; the bracket is then `[λᵢ(D̂) − s/n, λᵢ(D̂) + Δ/n]`.
//!
//! Shrinking (Liberty 2013; Ghashami et al. 2016): when the buffer holds
//! `2ℓ` rows, form the `2ℓ×2ℓ` Gram matrix `M = BBᵀ`, decompose
//! `M = UΛUᵀ`, let `δ = λ_{ℓ+1}`, keep rows `√(λᵢ−δ)/√λᵢ · Uᵢᵀ B` for
//! `i ≤ ℓ`, and add `δ` to `Δ`.

use std::ops::Range;

use rayon::iter::{IndexedParallelIterator, IntoParallelRefIterator, IntoParallelRefMutIterator, ParallelIterator};

use crate::linalg::{
    EigenSolver, Split, SymEigen, View, dgemm, gram_f64, gram_f64_of_f32_groups_split, sgemm_view, sum_sq_f64,
    sym_eigen, sym_eigen_with, sym_eigenvalues,
};

/// `x` rounded to `2^k × (nearest f16 of x·2^-k)`; the same expression
/// decodes an f16 row, so rounding and decoding agree bit for bit.
fn f16_round(x: f32, k: i32) -> f32 {
    f16_value(half::f16::from_f64(x as f64 * (-k as f64).exp2()), k)
}

fn f16_value(h: half::f16, k: i32) -> f32 {
    (h.to_f64() * (k as f64).exp2()) as f32
}

/// Width of the column panels a shrink rotates at a time.
const ROTATE_PANEL: usize = 2048;

/// `D̂` in an orthonormal basis of a sketch's row space (see `FdSketch::row_space`).
struct RowSpace {
    /// `Z = [B; ḡᵀ]`, row-major (m×d), in f64.
    z: Vec<f64>,
    /// Rows of `Z`.
    m: usize,
    /// Eigen-decomposition of `Z Zᵀ`.
    eg: SymEigen,
    /// Indices of its nonzero eigenvalues: the basis kept.
    keep: Vec<usize>,
    /// `S` (keep×keep, row-major).
    s: Vec<f64>,
}

/// Overlap of two subspaces given by orthonormal rows: ‖E Fᵀ‖²_F / k with
/// k the smaller dimension; 1 when one contains the other, 0 when they are
/// orthogonal. NaN when either is empty.
pub fn subspace_overlap(e: &[Vec<f64>], f: &[Vec<f64>]) -> f64 {
    let k = e.len().min(f.len());
    if k == 0 {
        return f64::NAN;
    }
    let mut sum = 0.0;
    for a in &e[..k] {
        for b in &f[..k] {
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            sum += dot * dot;
        }
    }
    sum / k as f64
}

/// Peak bytes a probe needs for a sketch of size `ell` at dimension `d`,
/// with per-sample gradients computed `block` rows at a time:
///
/// * the row buffer, `2ℓ × d` f32, and the gradient block, `block × d` f32;
/// * at the end, the row-space basis of `D̂` (`row_space`): the rows in
///   f64 and, for eigenvectors, as many f64 basis vectors: `2 × ℓ × d` f64;
/// * the shrink's `2ℓ × 2ℓ` f64 Gram matrix, its eigenvectors and the
///   eigensolver's workspace: about four such matrices.
///
/// The row buffer and the end-of-probe basis are not alive at once, but
/// this counts them together: a bound, not a measurement.
pub fn probe_memory_bytes(d: usize, ell: usize, block: usize) -> u64 {
    let (d, ell, block) = (d as u64, ell as u64, block as u64);
    4 * d * (2 * ell + block) + 16 * (ell + 1) * d + 4 * 8 * (2 * ell) * (2 * ell)
}

/// Peak bytes of each further thread computing a probe's shards beside the
/// first ([`probe_memory_bytes`] counts the first, and the end of the
/// probe): its row buffer and gradient block (`4·d·(2ℓ + block)`), its
/// shrink's Gram matrix and decomposition (`128·ℓ²`), and its compacted
/// shard sketch waiting to be merged (`4·ℓ·d`).
pub fn shard_thread_memory_bytes(d: usize, ell: usize, block: usize) -> u64 {
    let (d, ell, block) = (d as u64, ell as u64, block as u64);
    4 * d * (3 * ell + block) + 4 * 8 * (2 * ell) * (2 * ell)
}

/// The smallest ℓ at which a sketch of `n` rows of dimension `d` is exact:
/// with `ℓ ≥ d` every shrink discards nothing (the `2ℓ` buffered rows span
/// at most `d ≤ ℓ` directions), and with `2ℓ > n` no shrink ever happens.
pub fn exact_size(d: usize, n: usize) -> usize {
    d.min(n / 2 + 1).max(1)
}

/// The largest ℓ whose [`probe_memory_bytes`] fits in `memory_mb` MiB (0
/// when not even ℓ = 1 does).
pub fn max_ell_for_memory(d: usize, block: usize, memory_mb: u32) -> usize {
    let cap = memory_mb as u64 * 1024 * 1024;
    let (mut lo, mut hi) = (0usize, 1usize << 20);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if probe_memory_bytes(d, mid, block) <= cap { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Format version [`FdSketch::encode`] writes; versions 1 (without the
/// slack and f16 rows) and 2 (without the orthogonal groups) are still read.
///
/// Version 3, little-endian: magic `GSFD`, version u16, flags u16, d u32,
/// ℓ u32, rows u32, n u64, Δ f64, Σ‖g‖² f64, slack f64, the number of
/// orthogonal row groups u32 and each as (start u32, end u32), Σg (d × f64),
/// the rows (f32, or per row an i16 exponent and d × f16), CRC-32 of all
/// that.
pub const SKETCH_FORMAT_VERSION: u16 = 3;

/// Flag bit: rows are stored as f16 with a power-of-two exponent per row.
const FLAG_F16_ROWS: u16 = 1;
const MAGIC: &[u8; 4] = b"GSFD";

/// Errors decoding or combining sketches.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SketchError {
    /// The bytes are not a sketch of a supported version.
    #[error("malformed sketch: {0}")]
    Malformed(String),
    /// Two sketches with different shapes.
    #[error("sketch shape mismatch: {0}")]
    Mismatch(String),
    /// A value is NaN or infinite.
    #[error("sketch contains a non-finite value in {0}")]
    NonFinite(&'static str),
}

/// A Frequent Directions sketch plus exact first and second moments.
#[derive(Debug, Clone)]
pub struct FdSketch {
    d: usize,
    ell: usize,
    /// Row-major buffer of `rows × d` (capacity `2ℓ × d`).
    buf: Vec<f32>,
    rows: usize,
    delta: f64,
    n: u64,
    sum_g: Vec<f64>,
    sum_sq: f64,
    /// Lower slack `s`: `AᵀA − BᵀB ⪰ −s·I` (0 unless rows were rounded).
    slack: f64,
    /// Per-row exponents when every row is `2^k × (an f16 value)`, as left
    /// by [`FdSketch::round_rows_to_f16`]; cleared by any change to the rows.
    f16_exponents: Option<Vec<i16>>,
    /// Groups of rows that a shrink left, orthogonal by construction (up
    /// to the f32 rounding of the rotation), so their Gram block is taken
    /// as diagonal by the next shrink. Disjoint and in order. Encoded (from
    /// format version 3), so that a merge gives the same bits whether its
    /// inputs travelled or not; cleared by rounding the rows to f16.
    orthogonal: Vec<Range<usize>>,
}

/// Two sketches are equal when their contents are (the buffer's spare
/// capacity is not part of them).
impl PartialEq for FdSketch {
    fn eq(&self, o: &Self) -> bool {
        self.d == o.d
            && self.ell == o.ell
            && self.rows == o.rows
            && self.buf[..self.rows * self.d] == o.buf[..o.rows * o.d]
            && self.delta == o.delta
            && self.n == o.n
            && self.sum_g == o.sum_g
            && self.sum_sq == o.sum_sq
            && self.slack == o.slack
            && self.f16_exponents == o.f16_exponents
            && self.orthogonal == o.orthogonal
    }
}

impl FdSketch {
    /// An empty sketch of dimension `d` keeping `ell` directions.
    pub fn new(d: usize, ell: usize) -> Self {
        assert!(ell >= 1 && d >= 1, "FdSketch needs d ≥ 1 and ℓ ≥ 1");
        FdSketch {
            d,
            ell,
            buf: Vec::with_capacity(2 * ell * d),
            rows: 0,
            delta: 0.0,
            n: 0,
            sum_g: vec![0.0; d],
            sum_sq: 0.0,
            slack: 0.0,
            f16_exponents: None,
            orthogonal: Vec::new(),
        }
    }

    /// The lower slack `s` of the certificate (see the module doc).
    pub fn slack(&self) -> f64 {
        self.slack
    }

    /// Whether the rows are stored as scaled f16 values (and will be encoded so).
    pub fn has_f16_rows(&self) -> bool {
        self.f16_exponents.is_some()
    }

    /// Rounds every row to `2^k × f16` (k per row, so that the row's largest
    /// entry lands in [2¹⁴, 2¹⁵)), widens the certificate by the measured
    /// rounding (module doc), and marks the rows for f16 encoding.
    pub fn round_rows_to_f16(&mut self) {
        let d = self.d;
        let (mut b2, mut e2) = (0.0f64, 0.0f64);
        let mut exps = Vec::with_capacity(self.rows);
        for row in self.buf[..self.rows * d].chunks_exact_mut(d) {
            let max = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let k = if max > 0.0 { (max as f64).log2().floor() as i32 - 14 } else { 0 };
            for x in row.iter_mut() {
                let y = f16_round(*x, k);
                let (a, r) = (*x as f64, (*x - y) as f64);
                b2 += a * a;
                e2 += r * r;
                *x = y;
            }
            exps.push(k as i16);
        }
        // The f64 sums of squares round too: a relative margin covers them.
        let margin = 1.0 + 1e-9;
        let eta = (2.0 * b2.sqrt() * e2.sqrt() + e2) * margin;
        self.delta += eta;
        self.slack += eta;
        self.f16_exponents = Some(exps);
        self.orthogonal.clear();
    }

    /// Dimension of the rows.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// The sketch size ℓ.
    pub fn ell(&self) -> usize {
        self.ell
    }

    /// Number of sketched samples `n`.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The certificate Δ on `AᵀA − BᵀB`.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// Exact mean gradient `ḡ`.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.sum_g.iter().map(|s| s / n).collect()
    }

    /// Adds samples: `block` holds `m` rows of length `d`, row-major.
    pub fn insert_block(&mut self, block: &[f32]) {
        assert_eq!(block.len() % self.d, 0, "insert_block: not a whole number of rows");
        for row in block.chunks_exact(self.d) {
            for (s, &v) in self.sum_g.iter_mut().zip(row) {
                *s += v as f64;
            }
            self.sum_sq += sum_sq_f64(row);
            self.n += 1;
        }
        self.append_rows(block, &[], Split::Whole);
    }

    /// Appends rows to `B` (no moment bookkeeping), shrinking when full.
    /// `groups` are orthogonal groups of `block`'s rows (see `orthogonal`).
    fn append_rows(&mut self, block: &[f32], groups: &[Range<usize>], split: Split) {
        self.f16_exponents = None;
        let cap = 2 * self.ell;
        let total = block.len() / self.d;
        let mut from = 0;
        while from < total {
            let take = (cap - self.rows).min(total - from);
            self.buf.extend_from_slice(&block[from * self.d..(from + take) * self.d]);
            // The parts of the block's groups that landed, where they landed.
            for g in groups {
                let (s, e) = (g.start.max(from), g.end.min(from + take));
                if e > s + 1 {
                    self.orthogonal.push(self.rows + s - from..self.rows + e - from);
                }
            }
            self.rows += take;
            from += take;
            if self.rows == cap {
                self.shrink(split);
            }
        }
    }

    /// Shrinks the buffer to at most ℓ rows (one Frequent Directions shrink,
    /// if it holds more), leaving them orthogonal: the smallest form of the
    /// sketch, in which it travels and is stored, and in which two sketches
    /// merge cheapest (only their cross Gram block is computed). A sketch
    /// that is still exact (Δ = 0: every shrink so far discarded nothing,
    /// or none happened) is left as it is, as compacting it could make it
    /// approximate.
    pub fn compact(&mut self) {
        if self.rows > self.ell && self.delta > 0.0 {
            self.f16_exponents = None;
            self.shrink(Split::Whole);
        }
    }

    /// Rows currently held (at most ℓ once [`FdSketch::compact`]ed, less
    /// than 2ℓ always).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// One Frequent Directions shrink, its products and eigensolver cut as
    /// `split` says (which decides the bits: see [`Split`]).
    fn shrink(&mut self, split: Split) {
        let (r, d, ell) = (self.rows, self.d, self.ell);
        if r <= ell {
            return;
        }
        // The rows a shrink left are orthogonal: their block of the Gram
        // matrix is diagonal, and only its diagonal is computed (f64, from
        // the stored rows). What their f32 rounding leaves off the diagonal
        // is of the order of the rotation's own rounding.
        let gram = gram_f64_of_f32_groups_split(r, d, &self.buf, &self.orthogonal, split);
        let eig = sym_eigen_with(r, &gram, EigenSolver::ByOrder, split);
        let delta = eig.values[ell].max(0.0);
        // New rows: coef[i, :] = sqrt(λᵢ−δ)/sqrt(λᵢ) · Uᵢ  (i < ℓ, λᵢ > δ).
        let mut coef: Vec<f32> = Vec::with_capacity(ell * r);
        let mut kept = 0;
        for i in 0..ell {
            let lam = eig.values[i];
            if lam <= delta || lam <= 0.0 {
                break;
            }
            let s = ((lam - delta) / lam).sqrt();
            coef.extend(eig.vectors[i * r..(i + 1) * r].iter().map(|&u| (u * s) as f32));
            kept += 1;
        }
        // B ← coef·B in place, one column panel at a time: a panel of the
        // result depends only on the same columns of B. Halves computes two
        // panels side by side (each by the same product as one at a time:
        // the same bits), then writes both back.
        let step = match split {
            Split::Whole => 1,
            Split::Halves => 2,
        };
        let panel = ROTATE_PANEL.min(d);
        let mut tmp = vec![vec![0.0f32; kept * panel]; step.min(d.div_ceil(panel))];
        let rotate = |buf: &[f32], start: usize, out: &mut [f32]| {
            let w = ROTATE_PANEL.min(d - start);
            let b = View { offset: start, row_stride: d, col_stride: 1 };
            sgemm_view(kept, r, w, 1.0, &coef, View::rows(0, r), buf, b, 0.0, out, View::rows(0, w));
        };
        let starts: Vec<usize> = (0..d).step_by(ROTATE_PANEL).collect();
        for group in starts.chunks(step) {
            let buf = &self.buf;
            let work = |(&start, t): (&usize, &mut Vec<f32>)| rotate(buf, start, t);
            match split {
                Split::Whole => group.iter().zip(tmp.iter_mut()).for_each(work),
                Split::Halves => group.par_iter().zip(tmp.par_iter_mut()).for_each(work),
            }
            for (&start, t) in group.iter().zip(&tmp) {
                let w = ROTATE_PANEL.min(d - start);
                for i in 0..kept {
                    self.buf[i * d + start..i * d + start + w].copy_from_slice(&t[i * w..(i + 1) * w]);
                }
            }
        }
        self.buf.truncate(kept * d);
        self.rows = kept;
        self.orthogonal = if kept > 1 { vec![0..kept] } else { vec![] };
        self.delta += delta;
    }

    /// The sketch of the union of the samples of `self` and `other`:
    /// rows stacked and shrunk, `Δ = Δ₁ + Δ₂ + δ_merge`, moments added. The
    /// result keeps the larger of the two sizes ℓ.
    pub fn merge(&mut self, other: &FdSketch) -> Result<(), SketchError> {
        if self.d != other.d {
            return Err(SketchError::Mismatch(format!(
                "cannot merge d={} ℓ={} with d={} ℓ={}",
                self.d, self.ell, other.d, other.ell
            )));
        }
        // Sketches of different sizes merge at the larger: the smaller one's
        // rows are rows like any other, and the certificates add up.
        if other.ell > self.ell {
            self.ell = other.ell;
            self.buf.reserve(2 * self.ell * self.d - self.buf.len());
        }
        self.n += other.n;
        self.sum_sq += other.sum_sq;
        self.sum_g.iter_mut().zip(&other.sum_g).for_each(|(a, b)| *a += b);
        self.delta += other.delta;
        self.slack += other.slack;
        // What is known of the other's rows comes along (it travels with
        // them, so a merge gives the same bits whether they travelled).
        // A merge is cut in two (see `Split`): its shrink is one large
        // eigendecomposition that two threads do in about half the time.
        self.append_rows(&other.buf[..other.rows * other.d], &other.orthogonal, Split::Halves);
        Ok(())
    }

    /// Exact trace of `D`: `Σ‖g‖²/n − ‖ḡ‖²`.
    pub fn trace(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let n = self.n as f64;
        let mean_sq: f64 = self.sum_g.iter().map(|s| (s / n) * (s / n)).sum();
        (self.sum_sq / n - mean_sq).max(0.0)
    }

    /// Unbiased estimate of ‖∇f‖² from the exact moments:
    /// `(‖Σg‖² − Σ‖g‖²) / (n(n−1))`.
    pub fn grad_norm_sq_unbiased(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let n = self.n as f64;
        let s2: f64 = self.sum_g.iter().map(|s| s * s).sum();
        (s2 - self.sum_sq) / (n * (n - 1.0))
    }

    /// Eigenvalues of `D̂ = (1/n) BᵀB − ḡḡᵀ` in descending order (at most
    /// `rows + 1` of them; all others are 0). Every eigenvalue of the true `D`
    /// lies in `[λᵢ(D̂), λᵢ(D̂) + Δ/n]`.
    pub fn eigenvalues(&self) -> Vec<f64> {
        self.row_space().map(|rs| sym_eigenvalues(rs.keep.len(), &rs.s)).unwrap_or_default()
    }

    /// `D̂` in an orthonormal basis of the sketch's row space.
    ///
    /// With `Z = [B; ḡᵀ]` ((r+1)×d) and `W = diag(1/n, …, 1/n, −1)`,
    /// `D̂ = Zᵀ W Z`. If `G = Z Zᵀ = V Σ Vᵀ`, the vectors `Zᵀvⱼ/√σⱼ` are
    /// orthonormal and `D̂` restricted to them is `S = Σ^½ Vᵀ W V Σ^½`.
    fn row_space(&self) -> Option<RowSpace> {
        if self.n == 0 {
            return None;
        }
        let (r, d) = (self.rows, self.d);
        let n = self.n as f64;
        let mut z: Vec<f64> = self.buf[..r * d].iter().map(|&v| v as f64).collect();
        z.extend(self.sum_g.iter().map(|s| s / n));
        let m = r + 1;
        let eg = sym_eigen(m, &gram_f64(m, d, &z));
        let tol = eg.values.first().copied().unwrap_or(0.0).max(0.0) * 1e-13;
        let keep: Vec<usize> = (0..m).filter(|&i| eg.values[i] > tol).collect();
        let k = keep.len();
        // S = Y W Yᵀ with Y = Σ^½ Vᵀ (rows √σₐ·vₐ): one product of Y·W and Yᵀ.
        let mut y = Vec::with_capacity(k * m);
        let mut yw = Vec::with_capacity(k * m);
        for &ia in &keep {
            let sq = eg.values[ia].sqrt();
            for (j, &v) in eg.vectors[ia * m..(ia + 1) * m].iter().enumerate() {
                y.push(sq * v);
                yw.push(sq * v * if j < r { 1.0 / n } else { -1.0 });
            }
        }
        let mut yt = vec![0.0; m * k];
        for a in 0..k {
            for j in 0..m {
                yt[j * k + a] = y[a * m + j];
            }
        }
        let mut s = dgemm(k, m, k, &yw, &yt);
        // Exactly symmetric, as the eigensolver reads one triangle.
        for a in 0..k {
            for b in 0..a {
                s[b * k + a] = s[a * k + b];
            }
        }
        Some(RowSpace { z, m, eg, keep, s })
    }

    /// [`FdSketch::eigenvalues`] and [`FdSketch::top_eigenvectors`] at once,
    /// from one decomposition of the row space (what a probe's statistics
    /// and its eigenspace overlap both need).
    pub fn eigen_summary(&self, k: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
        let Some(rs) = self.row_space() else { return (vec![], vec![]) };
        let es = sym_eigen(rs.keep.len(), &rs.s);
        let vectors = self.vectors_from(&rs, &es, k);
        (es.values, vectors)
    }

    /// The top `k` eigenvectors of `D̂` (rows of length `d`, orthonormal,
    /// in the order of [`FdSketch::eigenvalues`]); fewer when `D̂` has fewer
    /// nonzero eigenvalues. `S`'s eigenvectors (see `row_space`) mapped back
    /// to ℝᵈ through the row-space basis.
    pub fn top_eigenvectors(&self, k: usize) -> Vec<Vec<f64>> {
        let Some(rs) = self.row_space() else { return vec![] };
        if k == 0 {
            return vec![];
        }
        let es = sym_eigen(rs.keep.len(), &rs.s);
        self.vectors_from(&rs, &es, k)
    }

    /// The top `k` eigenvectors of `D̂` in ℝᵈ from `S`'s decomposition `es`.
    fn vectors_from(&self, rs: &RowSpace, es: &SymEigen, k: usize) -> Vec<Vec<f64>> {
        let RowSpace { z, m, eg, keep, .. } = rs;
        let (d, kk, m) = (self.d, keep.len(), *m);
        if k == 0 || kk == 0 {
            return vec![];
        }
        // The basis vectors are u_a = Zᵀ v_a / √σ_a, and eigenvector i is
        // Σ_a q_ia u_a: so E = (Q Ṽ) Z with Ṽ's rows v_a/√σ_a, two products.
        let kout = k.min(kk);
        let mut vt = Vec::with_capacity(kk * m);
        for &ia in keep {
            let scale = 1.0 / eg.values[ia].sqrt();
            vt.extend(eg.vectors[ia * m..(ia + 1) * m].iter().map(|v| v * scale));
        }
        let p = dgemm(kout, kk, m, &es.vectors[..kout * kk], &vt);
        let e = dgemm(kout, m, d, &p, z);
        e.chunks_exact(d).map(<[f64]>::to_vec).collect()
    }

    /// Serialises the sketch (little-endian, versioned, CRC-32 protected).
    pub fn encode(&self) -> Vec<u8> {
        let d = self.d;
        let rows = &self.buf[..self.rows * d];
        // f16 rows only if each one really is 2^k × f16 (checked value by value).
        let f16: Option<Vec<(i16, Vec<half::f16>)>> = self.f16_exponents.as_ref().and_then(|exps| {
            rows.chunks_exact(d)
                .zip(exps)
                .map(|(row, &k)| {
                    let scale = (-(k as f64)).exp2();
                    let h: Vec<half::f16> = row.iter().map(|&x| half::f16::from_f64(x as f64 * scale)).collect();
                    h.iter().zip(row).all(|(&h, &x)| f16_value(h, k as i32).to_bits() == x.to_bits()).then_some((k, h))
                })
                .collect()
        });
        let mut out = Vec::with_capacity(56 + d * 8 + self.rows * d * if f16.is_some() { 2 } else { 4 });
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SKETCH_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(if f16.is_some() { FLAG_F16_ROWS } else { 0 }).to_le_bytes());
        out.extend_from_slice(&(d as u32).to_le_bytes());
        out.extend_from_slice(&(self.ell as u32).to_le_bytes());
        out.extend_from_slice(&(self.rows as u32).to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&self.delta.to_le_bytes());
        out.extend_from_slice(&self.sum_sq.to_le_bytes());
        out.extend_from_slice(&self.slack.to_le_bytes());
        out.extend_from_slice(&(self.orthogonal.len() as u32).to_le_bytes());
        for g in &self.orthogonal {
            out.extend_from_slice(&(g.start as u32).to_le_bytes());
            out.extend_from_slice(&(g.end as u32).to_le_bytes());
        }
        self.sum_g.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        match &f16 {
            Some(rows) => rows.iter().for_each(|(k, h)| {
                out.extend_from_slice(&k.to_le_bytes());
                h.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            }),
            None => rows.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses [`FdSketch::encode`]'s output; rejects wrong magic, version,
    /// length, checksum, shape (`expect_dim`, when given) or non-finite values.
    pub fn decode(bytes: &[u8], expect_dim: Option<usize>) -> Result<Self, SketchError> {
        let bad = |m: &str| SketchError::Malformed(m.to_string());
        if bytes.len() < 48 {
            return Err(bad("too short"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().map_err(|_| bad("crc"))?) {
            return Err(bad("checksum mismatch (corrupted or truncated)"));
        }
        if &body[..4] != MAGIC {
            return Err(bad("wrong magic number"));
        }
        let mut cur = Cursor { b: body, at: 4 };
        let version = u16::from_le_bytes(cur.take::<2>()?);
        if !(1..=SKETCH_FORMAT_VERSION).contains(&version) {
            return Err(SketchError::Malformed(format!(
                "unsupported version {version} (this build reads 1 to {SKETCH_FORMAT_VERSION})"
            )));
        }
        let flags = u16::from_le_bytes(cur.take::<2>()?);
        if flags & !FLAG_F16_ROWS != 0 || (version == 1 && flags != 0) {
            return Err(SketchError::Malformed(format!("unknown flags {flags:#x} for version {version}")));
        }
        let f16 = flags & FLAG_F16_ROWS != 0;
        let d = u32::from_le_bytes(cur.take::<4>()?) as usize;
        let ell = u32::from_le_bytes(cur.take::<4>()?) as usize;
        let rows = u32::from_le_bytes(cur.take::<4>()?) as usize;
        if d == 0 || ell == 0 || rows >= 2 * ell {
            return Err(SketchError::Malformed(format!("impossible shape d={d} ℓ={ell} rows={rows}")));
        }
        if let Some(want) = expect_dim
            && want != d
        {
            return Err(SketchError::Mismatch(format!("sketch has dimension {d}, expected {want}")));
        }
        let n = u64::from_le_bytes(cur.take::<8>()?);
        let delta = f64::from_le_bytes(cur.take::<8>()?);
        let sum_sq = f64::from_le_bytes(cur.take::<8>()?);
        let slack = if version >= 2 { f64::from_le_bytes(cur.take::<8>()?) } else { 0.0 };
        let groups = if version >= 3 { u32::from_le_bytes(cur.take::<4>()?) as usize } else { 0 };
        let per_row = if f16 { 2 + 2 * d } else { 4 * d };
        let need = groups
            .checked_mul(8)
            .and_then(|x| x.checked_add(cur.at))
            .and_then(|x| x.checked_add(d.checked_mul(8)?))
            .and_then(|x| x.checked_add(rows.checked_mul(per_row)?));
        if need != Some(body.len()) {
            return Err(SketchError::Malformed(format!(
                "length {} does not match shape d={d} rows={rows} groups={groups}",
                body.len()
            )));
        }
        let mut orthogonal: Vec<Range<usize>> = Vec::with_capacity(groups);
        for _ in 0..groups {
            let start = u32::from_le_bytes(cur.take::<4>()?) as usize;
            let end = u32::from_le_bytes(cur.take::<4>()?) as usize;
            if start >= end || end > rows || orthogonal.last().is_some_and(|g| g.end > start) {
                return Err(SketchError::Malformed(format!(
                    "orthogonal row group {start}..{end} is empty, out of order or beyond the {rows} rows"
                )));
            }
            orthogonal.push(start..end);
        }
        if f16 && groups > 0 {
            return Err(bad("f16 rows cannot be marked orthogonal"));
        }
        let mut sum_g = Vec::with_capacity(d);
        for _ in 0..d {
            sum_g.push(f64::from_le_bytes(cur.take::<8>()?));
        }
        let mut buf = Vec::with_capacity(2 * ell * d);
        let mut f16_exponents = None;
        if f16 {
            let mut exps = Vec::with_capacity(rows);
            for _ in 0..rows {
                let k = i16::from_le_bytes(cur.take::<2>()?);
                for _ in 0..d {
                    buf.push(f16_value(half::f16::from_le_bytes(cur.take::<2>()?), k as i32));
                }
                exps.push(k);
            }
            f16_exponents = Some(exps);
        } else {
            for _ in 0..rows * d {
                buf.push(f32::from_le_bytes(cur.take::<4>()?));
            }
        }
        if !delta.is_finite() || delta < 0.0 || !sum_sq.is_finite() || !slack.is_finite() || slack < 0.0 {
            return Err(SketchError::NonFinite("Δ, slack or Σ‖g‖²"));
        }
        if !sum_g.iter().all(|v| v.is_finite()) {
            return Err(SketchError::NonFinite("Σg"));
        }
        if !buf.iter().all(|v| v.is_finite()) {
            return Err(SketchError::NonFinite("rows"));
        }
        Ok(FdSketch { d, ell, buf, rows, delta, n, sum_g, sum_sq, slack, f16_exponents, orthogonal })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SketchError> {
        let s = self.b.get(self.at..self.at + N).ok_or_else(|| SketchError::Malformed("truncated".into()))?;
        self.at += N;
        s.try_into().map_err(|_| SketchError::Malformed("truncated".into()))
    }
}

/// Exact `D` for small `d`: accumulates `AᵀA` densely (f64). Used to
/// validate sketches.
#[derive(Debug, Clone)]
pub struct ExactCovariance {
    d: usize,
    ata: Vec<f64>,
    sum_g: Vec<f64>,
    n: u64,
}

impl ExactCovariance {
    /// An empty accumulator of dimension `d`.
    pub fn new(d: usize) -> Self {
        ExactCovariance { d, ata: vec![0.0; d * d], sum_g: vec![0.0; d], n: 0 }
    }

    /// Adds another accumulator's rows (of the same dimension).
    pub fn merge(&mut self, other: &ExactCovariance) {
        assert_eq!(self.d, other.d, "ExactCovariance::merge: dimensions differ");
        self.ata.iter_mut().zip(&other.ata).for_each(|(a, b)| *a += b);
        self.sum_g.iter_mut().zip(&other.sum_g).for_each(|(a, b)| *a += b);
        self.n += other.n;
    }

    /// Adds rows.
    pub fn insert_block(&mut self, block: &[f32]) {
        let d = self.d;
        let m = block.len() / d;
        let b64: Vec<f64> = block.iter().map(|&v| v as f64).collect();
        // AᵀA += blockᵀ block
        #[allow(unsafe_code)]
        // SAFETY: b64 is m×d, read transposed as d×m; ata is d×d.
        unsafe {
            matrixmultiply::dgemm(
                d,
                m,
                d,
                1.0,
                b64.as_ptr(),
                1,
                d as isize,
                b64.as_ptr(),
                d as isize,
                1,
                1.0,
                self.ata.as_mut_ptr(),
                d as isize,
                1,
            );
        }
        for row in b64.chunks_exact(d) {
            self.sum_g.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        self.n += m as u64;
    }

    /// Serialises the accumulator exactly: `[u64 d][u64 n][d f64 Σg][d² f64
    /// AᵀA]`, little-endian (a probe shard computed elsewhere travels so).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * (self.d + self.ata.len()));
        out.extend_from_slice(&(self.d as u64).to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
        self.sum_g.iter().chain(&self.ata).for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out
    }

    /// Parses [`ExactCovariance::encode`]'s output of dimension `d`.
    pub fn decode(bytes: &[u8], d: usize) -> Result<Self, SketchError> {
        let bad = |m: String| SketchError::Malformed(m);
        let head = |i: usize| bytes.get(i * 8..i * 8 + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let (Some(dim), Some(n)) = (head(0), head(1)) else { return Err(bad("exact covariance too short".into())) };
        if dim as usize != d || bytes.len() != 16 + 8 * (d + d * d) {
            return Err(bad(format!(
                "exact covariance of {} bytes, dimension {dim}; expected dimension {d}",
                bytes.len()
            )));
        }
        let mut v: Vec<f64> =
            bytes[16..].chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect();
        if !v.iter().all(|x| x.is_finite()) {
            return Err(SketchError::NonFinite("exact covariance"));
        }
        let ata = v.split_off(d);
        Ok(ExactCovariance { d, ata, sum_g: v, n })
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Number of rows.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Unbiased ‖∇f‖²: `(‖Σg‖² − Σ‖g‖²) / (n(n−1))`.
    pub fn grad_norm_sq_unbiased(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let n = self.n as f64;
        let s2: f64 = self.sum_g.iter().map(|s| s * s).sum();
        let sum_sq: f64 = (0..self.d).map(|i| self.ata[i * self.d + i]).sum();
        (s2 - sum_sq) / (n * (n - 1.0))
    }

    /// Exact trace of `D`.
    pub fn trace(&self) -> f64 {
        let n = self.n.max(1) as f64;
        (0..self.d).map(|i| self.ata[i * self.d + i] / n - (self.sum_g[i] / n).powi(2)).sum::<f64>().max(0.0)
    }

    /// Eigenvalues of `D`, descending.
    pub fn eigenvalues(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        let d = self.d;
        let mut dm = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                dm[i * d + j] = self.ata[i * d + j] / n - (self.sum_g[i] / n) * (self.sum_g[j] / n);
            }
        }
        sym_eigenvalues(d, &dm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, Stream};

    /// A matrix with a decaying spectrum plus a mean offset.
    fn structured(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed, Stream::Other(11));
        let mut a = vec![0.0f32; n * d];
        for i in 0..n {
            for j in 0..d {
                let scale = 1.0 / (1.0 + j as f64).powf(1.2);
                a[i * d + j] = (r.normal() * scale + 0.3 * scale) as f32;
            }
        }
        a
    }

    /// Samples whose covariance lives in coordinates `first..first+5` with
    /// scales 5, 4, 3, 2, 1, plus a mean offset.
    fn planted(n: usize, d: usize, first: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed, Stream::Other(12));
        let mut a = vec![0.0f32; n * d];
        for i in 0..n {
            for c in 0..5 {
                a[i * d + first + c] = (r.normal() * (5 - c) as f64 + 0.5) as f32;
            }
        }
        a
    }

    #[test]
    fn eigenvectors_diagonalise_the_sketch_and_subspace_overlap_behaves() {
        let (n, d) = (400, 40);
        let mut sk = FdSketch::new(d, 8);
        sk.insert_block(&planted(n, d, 3, 1));
        let vals = sk.eigenvalues();
        let vecs = sk.top_eigenvectors(4);
        assert_eq!(vecs.len(), 4);
        // Orthonormal, and D̂ e = λ e with D̂ = (1/n) BᵀB − ḡḡᵀ.
        let nn = sk.count() as f64;
        let mean = sk.mean();
        for (i, e) in vecs.iter().enumerate() {
            for (j, f) in vecs.iter().enumerate() {
                let dot: f64 = e.iter().zip(f).map(|(a, b)| a * b).sum();
                assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "⟨e{i}, e{j}⟩ = {dot}");
            }
            let mut de = vec![0.0; d];
            for row in sk.buf[..sk.rows * d].chunks_exact(d) {
                let p: f64 = row.iter().zip(e).map(|(&b, &x)| b as f64 * x).sum();
                de.iter_mut().zip(row).for_each(|(y, &b)| *y += p * b as f64 / nn);
            }
            let gm: f64 = mean.iter().zip(e).map(|(a, b)| a * b).sum();
            de.iter_mut().zip(&mean).for_each(|(y, &m)| *y -= gm * m);
            let err: f64 = de.iter().zip(e).map(|(y, x)| (y - vals[i] * x).powi(2)).sum::<f64>().sqrt();
            assert!(err < 1e-8 * vals[0], "eigenpair {i}: residual {err}");
            // The planted directions: all mass on coordinates 3..8.
            let inside: f64 = e[3..8].iter().map(|x| x * x).sum();
            assert!(inside > 0.999, "e{i} lies in the planted subspace ({inside})");
        }
        // Same subspace from other samples: overlap near 1; an orthogonal one: 0.
        let mut again = FdSketch::new(d, 8);
        again.insert_block(&planted(n, d, 3, 2));
        let same = subspace_overlap(&vecs, &again.top_eigenvectors(4));
        assert!(same > 0.9, "same planted subspace: overlap {same}");
        let mut other = FdSketch::new(d, 8);
        other.insert_block(&planted(n, d, 20, 3));
        let orth = subspace_overlap(&vecs, &other.top_eigenvectors(4));
        assert!(orth < 1e-12, "orthogonal subspaces: overlap {orth}");
        assert!(subspace_overlap(&[], &vecs).is_nan());
    }

    fn check_bounds(sk: &FdSketch, exact: &ExactCovariance) {
        let n = sk.count() as f64;
        let lo: Vec<f64> = sk.eigenvalues().iter().map(|l| l - sk.slack() / n).collect();
        let ex = exact.eigenvalues();
        let slack = 1e-6 * ex[0].abs().max(1e-12);
        for (i, &e) in ex.iter().enumerate() {
            let l = lo.get(i).copied().unwrap_or(-sk.slack() / n);
            assert!(e + slack >= l, "λ{i}: exact {e} below sketch {l}");
            let width = (sk.delta() + sk.slack()) / n;
            assert!(e <= l + width + slack, "λ{i}: exact {e} above sketch {l} + (Δ + s)/n {width}");
        }
    }

    #[test]
    fn certified_bounds_hold() {
        for &(n, d, ell) in &[(300usize, 40usize, 8usize), (500, 60, 16), (50, 30, 40)] {
            let a = structured(n, d, n as u64);
            let mut sk = FdSketch::new(d, ell);
            sk.insert_block(&a);
            let mut ex = ExactCovariance::new(d);
            ex.insert_block(&a);
            check_bounds(&sk, &ex);
            let tr: f64 = ex.eigenvalues().iter().sum();
            assert!((tr - sk.trace()).abs() < 1e-9 * tr.max(1.0));
        }
    }

    /// The rows a shrink leaves are orthogonal up to f32 rounding, so the
    /// next shrink may take their Gram block as diagonal: a sketch that
    /// does agrees with one that recomputes every block (what it knows
    /// forgotten between blocks) to rounding level, and both keep the
    /// certificate.
    #[test]
    fn shrinks_that_reuse_the_orthogonal_rows_agree_with_full_ones() {
        let (n, d, ell) = (2000usize, 300usize, 16usize);
        let a = structured(n, d, 11);
        let mut reuse = FdSketch::new(d, ell);
        let mut full = FdSketch::new(d, ell);
        for block in a.chunks(37 * d) {
            reuse.insert_block(block);
            full.orthogonal.clear();
            full.insert_block(block);
            // What the sketch claims holds for the rows it covers.
            assert!(reuse.orthogonal.len() <= 1 && reuse.orthogonal.iter().all(|g| g.start == 0));
            let p = reuse.orthogonal.first().map_or(0, |g| g.end);
            let g = crate::linalg::gram_f64_of_f32(p, d, &reuse.buf);
            for i in 0..p {
                for j in 0..i {
                    let off = g[i * p + j].abs() / (g[i * p + i] * g[j * p + j]).sqrt();
                    assert!(off < 1e-5, "rows {i}, {j} of the last shrink: cosine {off}");
                }
            }
        }
        let (x, y) = (reuse.eigenvalues(), full.eigenvalues());
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert!((a - b).abs() <= 1e-5 * y[0], "λ{i}: {a} with reuse, {b} without");
        }
        assert!((reuse.delta() - full.delta()).abs() <= 1e-5 * full.delta());
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        check_bounds(&reuse, &ex);
        check_bounds(&full, &ex);
        // A merge gives the same bits whether its inputs travelled or not.
        let (a, b) = (reuse.clone(), full.clone());
        assert!(!a.orthogonal.is_empty());
        let travelled = |s: &FdSketch| FdSketch::decode(&s.encode(), Some(d)).unwrap();
        let mut m1 = a.clone();
        m1.merge(&b).unwrap();
        let mut m2 = travelled(&a);
        m2.merge(&travelled(&b)).unwrap();
        assert_eq!(m1.encode(), m2.encode());
        // Rounding rows to f16 breaks their orthogonality: the cache goes.
        reuse.round_rows_to_f16();
        assert!(reuse.orthogonal.is_empty());
    }

    /// A shrink cut in two computes its Gram strips and rotation panels
    /// side by side by the same products: below faer's order (where the
    /// eigensolver is the same either way) its bits equal a whole shrink's,
    /// over more than two rotation panels and with orthogonal row groups.
    #[test]
    fn a_shrink_cut_in_two_changes_no_bit_of_its_products() {
        let (d, ell) = (2 * ROTATE_PANEL + 517, 40usize);
        let a = structured(4 * ell, d, 5);
        let mut base = FdSketch::new(d, ell);
        base.insert_block(&a[..3 * ell * d]);
        base.compact();
        assert!(base.delta() > 0.0 && base.rows() <= ell && !base.orthogonal.is_empty());
        for rows in [3, ell - 1] {
            let mut whole = base.clone();
            whole.buf.extend_from_slice(&a[3 * ell * d..(3 * ell + rows) * d]);
            whole.rows += rows;
            let mut halves = whole.clone();
            whole.shrink(Split::Whole);
            halves.shrink(Split::Halves);
            assert_eq!(whole.encode(), halves.encode(), "{rows} new rows");
        }
    }

    /// A merge is cut in two whatever pool runs it: its bits are the same
    /// on one thread and on several (faer's solver at degree 2 included).
    #[test]
    fn a_merge_has_the_same_bits_on_a_pool_of_one_thread_or_of_three() {
        let (d, ell) = (700usize, 200usize);
        assert!(2 * ell >= crate::linalg::FAER_MIN_ORDER);
        let a = structured(3 * ell, d, 9);
        let mut x = FdSketch::new(d, ell);
        x.insert_block(&a[..ell * 3 / 2 * d]);
        x.compact();
        let mut y = FdSketch::new(d, ell);
        y.insert_block(&a[ell * 3 / 2 * d..]);
        y.compact();
        let merged = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut m = x.clone();
                m.merge(&y).unwrap();
                m.encode()
            })
        };
        let one = merged(1);
        assert_eq!(one, merged(3));
        assert_eq!(one, merged(1));
        // And it is a sketch of both: within its certificate.
        let mut m = x.clone();
        m.merge(&y).unwrap();
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        check_bounds(&m, &ex);
    }

    #[test]
    fn merge_of_halves_agrees_with_whole_within_delta() {
        let (n, d, ell) = (400, 50, 10);
        let a = structured(n, d, 4);
        let (h1, h2) = a.split_at(200 * d);
        let mut s1 = FdSketch::new(d, ell);
        s1.insert_block(h1);
        let mut s2 = FdSketch::new(d, ell);
        s2.insert_block(h2);
        s1.merge(&s2).unwrap();
        let mut whole = FdSketch::new(d, ell);
        whole.insert_block(&a);
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        check_bounds(&s1, &ex);
        assert_eq!(s1.count(), whole.count());
        assert!((s1.trace() - whole.trace()).abs() < 1e-9);
        let (em, ew) = (s1.eigenvalues(), whole.eigenvalues());
        let tol = (s1.delta() + whole.delta()) / n as f64 + 1e-9;
        for i in 0..ell {
            assert!((em[i] - ew[i]).abs() <= tol, "λ{i}: merged {} whole {} tol {tol}", em[i], ew[i]);
        }
    }

    #[test]
    fn exact_when_no_shrink_happens() {
        let (n, d) = (20, 12);
        let a = structured(n, d, 1);
        let mut sk = FdSketch::new(d, 16);
        sk.insert_block(&a);
        assert_eq!(sk.delta(), 0.0);
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        for (x, y) in sk.eigenvalues().iter().zip(ex.eigenvalues()) {
            assert!((x - y).abs() < 1e-7 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    /// f16 rows: about half the bytes, the certificate widened by the
    /// measured rounding and still holding against the exact spectrum,
    /// lossless to encode and decode, and undone by any change to the rows.
    #[test]
    fn f16_rows_halve_the_payload_and_keep_the_certificate() {
        let (n, d, ell) = (600, 300, 16);
        let a = structured(n, d, 9);
        let mut sk = FdSketch::new(d, ell);
        sk.insert_block(&a);
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        let full = sk.encode();
        let (delta, rows) = (sk.delta(), sk.rows);
        let mut h = sk.clone();
        h.round_rows_to_f16();
        assert!(h.has_f16_rows());
        let eta = h.slack();
        assert!(eta > 0.0 && h.delta() == delta + eta);
        // f16 keeps 11 significant bits: η ≈ 2·2⁻¹²‖B‖²_F, far below λ_max·n.
        let lmax = ex.eigenvalues()[0];
        assert!(eta < 1e-3 * lmax * n as f64, "η {eta} vs λ_max·n {}", lmax * n as f64);
        check_bounds(&h, &ex);
        let bytes = h.encode();
        // (f16 rows are not marked orthogonal: their groups' bytes go too.)
        let groups = 8 * sk.orthogonal.len();
        assert_eq!(full.len() - bytes.len(), rows * (2 * d - 2) + groups, "2 bytes per value saved, 2 per row spent");
        let back = FdSketch::decode(&bytes, Some(d)).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.encode(), bytes);
        // Merging keeps both slacks; the merged rows are f32 again.
        let mut m = back.clone();
        m.merge(&back).unwrap();
        assert!(!m.has_f16_rows() && m.slack() == 2.0 * eta);
        assert!(m.encode().len() > bytes.len());
        // The stats carry the lower slack into every bracket.
        let st = crate::stats::SpectrumStats::from_sketch(&h);
        assert!(st.lambda_max.lo <= lmax && lmax <= st.lambda_max.hi, "{:?} vs {lmax}", st.lambda_max);
        assert!((st.eig_error - h.delta() / n as f64 - eta / n as f64).abs() < 1e-15 * st.eig_error);
    }

    /// Blobs of format version 1 (before slack and f16 rows) still decode.
    #[test]
    fn version_1_sketches_still_decode_and_unknown_flags_do_not() {
        let a = structured(100, 20, 3);
        let mut sk = FdSketch::new(20, 8);
        sk.insert_block(&a);
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&0u16.to_le_bytes());
        for x in [sk.d as u32, sk.ell as u32, sk.rows as u32] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        v1.extend_from_slice(&sk.n.to_le_bytes());
        v1.extend_from_slice(&sk.delta.to_le_bytes());
        v1.extend_from_slice(&sk.sum_sq.to_le_bytes());
        sk.sum_g.iter().for_each(|v| v1.extend_from_slice(&v.to_le_bytes()));
        sk.buf[..sk.rows * sk.d].iter().for_each(|v| v1.extend_from_slice(&v.to_le_bytes()));
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        // Nothing was known of the rows then.
        let mut want = sk.clone();
        want.orthogonal.clear();
        assert_eq!(FdSketch::decode(&v1, Some(20)).unwrap(), want);
        let mut flagged = sk.encode();
        flagged[6] = 0x02;
        let body = flagged.len() - 4;
        let crc = crc32fast::hash(&flagged[..body]);
        flagged[body..].copy_from_slice(&crc.to_le_bytes());
        assert!(FdSketch::decode(&flagged, None).unwrap_err().to_string().contains("unknown flags"));
    }

    #[test]
    fn encode_decode_roundtrip_and_rejections() {
        let a = structured(100, 20, 2);
        let mut sk = FdSketch::new(20, 8);
        sk.insert_block(&a);
        let bytes = sk.encode();
        assert_eq!(FdSketch::decode(&bytes, Some(20)).unwrap(), sk);
        assert!(matches!(FdSketch::decode(&bytes, Some(21)), Err(SketchError::Mismatch(_))));
        assert!(FdSketch::decode(&bytes[..bytes.len() - 9], None).is_err());
        let mut flipped = bytes.clone();
        flipped[60] ^= 0x40;
        assert!(FdSketch::decode(&flipped, None).unwrap_err().to_string().contains("checksum"));
        let mut other = FdSketch::new(21, 8);
        assert!(other.merge(&sk).is_err());
        // The orthogonal groups travel, and impossible ones are refused.
        assert_eq!(sk.orthogonal, vec![0..8]);
        let group_at = 56;
        let mut bad = bytes.clone();
        bad[group_at + 4..group_at + 8].copy_from_slice(&(sk.rows as u32 + 1).to_le_bytes());
        let body = bad.len() - 4;
        let crc = crc32fast::hash(&bad[..body]);
        bad[body..].copy_from_slice(&crc.to_le_bytes());
        let err = FdSketch::decode(&bad, None).unwrap_err().to_string();
        assert!(err.contains("orthogonal row group 0..13"), "{err}");
    }

    /// A compacted sketch holds at most ℓ orthogonal rows and keeps the
    /// certificate; two compact sketches merge through their cross Gram
    /// block only, to the same bits whether they travelled or not, and the
    /// merge of shards in order agrees with the whole within the bracket.
    #[test]
    fn compact_sketches_merge_and_keep_the_certificate() {
        let (n, d, ell) = (1200usize, 120usize, 16usize);
        let a = structured(n, d, 21);
        let mut ex = ExactCovariance::new(d);
        ex.insert_block(&a);
        let shards: Vec<FdSketch> = a
            .chunks(300 * d)
            .map(|rows| {
                let mut s = FdSketch::new(d, ell);
                s.insert_block(rows);
                s.compact();
                assert!(s.rows() <= ell && s.orthogonal == vec![0..s.rows()]);
                s
            })
            .collect();
        let travelled = |s: &FdSketch| FdSketch::decode(&s.encode(), Some(d)).unwrap();
        let (mut here, mut there) = (shards[0].clone(), travelled(&shards[0]));
        for s in &shards[1..] {
            here.merge(s).unwrap();
            there.merge(&travelled(s)).unwrap();
            assert_eq!(here.encode(), there.encode());
        }
        here.compact();
        check_bounds(&here, &ex);
        let mut whole = FdSketch::new(d, ell);
        whole.insert_block(&a);
        let tol = (here.delta() + whole.delta()) / n as f64;
        for (i, (x, y)) in here.eigenvalues().iter().zip(whole.eigenvalues()).take(ell).enumerate() {
            assert!((x - y).abs() <= tol, "λ{i}: shards {x}, whole {y}, within {tol}");
        }
    }
}
