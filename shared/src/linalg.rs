//! Dense linear algebra the science core needs: matrix products (through the
//! `matrixmultiply` kernels), a symmetric eigensolver for the small Gram
//! matrices of sketches, and random orthonormal bases.
//!
//! Matrices are row-major slices with explicit dimensions.

use crate::rng::Rng;

/// `c = alpha * a(m×k) · b(k×n) + beta * c(m×n)`, row-major f32.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm: slice too short");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY-free: matrixmultiply's API is unsafe only for raw pointers; the
    // asserts above guarantee the extents.
    gemm_raw(
        m,
        k,
        n,
        alpha,
        a.as_ptr(),
        (k as isize, 1),
        b.as_ptr(),
        (n as isize, 1),
        beta,
        c.as_mut_ptr(),
        n as isize,
    );
}

/// `c = alpha * a(m×k) · bᵀ where b is (n×k) + beta * c(m×n)`, row-major f32.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_nt(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n, "sgemm_nt: slice too short");
    if m == 0 || n == 0 {
        return;
    }
    gemm_raw(
        m,
        k,
        n,
        alpha,
        a.as_ptr(),
        (k as isize, 1),
        b.as_ptr(),
        (1, k as isize),
        beta,
        c.as_mut_ptr(),
        n as isize,
    );
}

/// `c = alpha * aᵀ · b + beta * c` where a is (k×m), b is (k×n), c is (m×n).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_tn(m: usize, k: usize, n: usize, alpha: f32, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
    assert!(a.len() >= k * m && b.len() >= k * n && c.len() >= m * n, "sgemm_tn: slice too short");
    if m == 0 || n == 0 {
        return;
    }
    gemm_raw(
        m,
        k,
        n,
        alpha,
        a.as_ptr(),
        (1, m as isize),
        b.as_ptr(),
        (n as isize, 1),
        beta,
        c.as_mut_ptr(),
        n as isize,
    );
}

/// A strided view of a matrix inside a slice: element (i, j) is at
/// `offset + i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Index of element (0, 0).
    pub offset: usize,
    /// Step between rows.
    pub row_stride: usize,
    /// Step between columns.
    pub col_stride: usize,
}

impl View {
    /// A contiguous row-major matrix with `cols` columns starting at `offset`.
    pub fn rows(offset: usize, cols: usize) -> Self {
        View { offset, row_stride: cols, col_stride: 1 }
    }

    /// The transpose of `self`.
    pub fn t(self) -> Self {
        View { offset: self.offset, row_stride: self.col_stride, col_stride: self.row_stride }
    }

    fn last(&self, rows: usize, cols: usize) -> usize {
        self.offset + (rows.max(1) - 1) * self.row_stride + (cols.max(1) - 1) * self.col_stride
    }
}

/// `c = alpha * a · b + beta * c` on strided views (`a` is m×k, `b` k×n,
/// `c` m×n); panics if a view reaches outside its slice.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_view(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    va: View,
    b: &[f32],
    vb: View,
    beta: f32,
    c: &mut [f32],
    vc: View,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || (va.last(m, k) < a.len() && vb.last(k, n) < b.len()), "sgemm_view: input view out of bounds");
    assert!(vc.last(m, n) < c.len() && vc.col_stride == 1, "sgemm_view: output view out of bounds or not row-major");
    gemm_raw(
        m,
        k,
        n,
        alpha,
        a[va.offset..].as_ptr(),
        (va.row_stride as isize, va.col_stride as isize),
        b[vb.offset..].as_ptr(),
        (vb.row_stride as isize, vb.col_stride as isize),
        beta,
        c[vc.offset..].as_mut_ptr(),
        vc.row_stride as isize,
    );
}

#[allow(unsafe_code, clippy::too_many_arguments)]
fn gemm_raw(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    (rsa, csa): (isize, isize),
    b: *const f32,
    (rsb, csb): (isize, isize),
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    // SAFETY: callers checked that every index the strides reach lies inside
    // the slices the pointers come from, and `c` does not alias `a` or `b`
    // (it is a distinct `&mut`).
    unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, 1) }
}

/// `c = a(m×k) · aᵀ` for row-major f64 `a`, the Gram matrix of its rows.
/// Only the lower strips (each block of rows through its diagonal block)
/// are multiplied, then mirrored: half the flops of the whole product and
/// the same bits (every entry's sum is grouped as in one long product, and
/// `aᵢ·aⱼ = aⱼ·aᵢ` exactly).
pub fn gram_f64(m: usize, k: usize, a: &[f64]) -> Vec<f64> {
    assert!(a.len() >= m * k, "gram_f64: slice too short");
    let mut c = vec![0.0; m * m];
    if m == 0 || k == 0 {
        return c;
    }
    let strips: Vec<(usize, usize, usize)> =
        (0..m).step_by(GRAM_BLOCK).map(|i0| (i0, GRAM_BLOCK.min(m - i0), i0 + GRAM_BLOCK.min(m - i0))).collect();
    gram_strips(m, k, &a[..m * k], &strips, &mut c, 0);
    for i in 0..m {
        for j in (i + 1)..m {
            c[i * m + j] = c[j * m + i];
        }
    }
    c
}

/// `c = a(m×k) · b(k×n)` for row-major f64 matrices; a fresh `m×n` result.
pub fn dgemm(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
    dgemm_strided(m, k, n, a, (k, 1), b, (n, 1))
}

/// `a(m×k) · b(k×n)` into a fresh row-major `m×n` matrix, each operand read
/// from its slice with (row, column) strides. Panics unless every index the
/// strides reach lies inside its slice.
fn dgemm_strided(
    m: usize,
    k: usize,
    n: usize,
    a: &[f64],
    sa: (usize, usize),
    b: &[f64],
    sb: (usize, usize),
) -> Vec<f64> {
    let reach = |rows: usize, cols: usize, (rs, cs): (usize, usize)| {
        if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
    };
    assert!(a.len() >= reach(m, k, sa) && b.len() >= reach(k, n, sb), "dgemm: slice too short");
    let mut c = vec![0.0; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    #[allow(unsafe_code)]
    // SAFETY: every index the strides reach is inside `a` and `b` (checked
    // above); c is a fresh m×n buffer that aliases neither.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            sa.0 as isize,
            sa.1 as isize,
            b.as_ptr(),
            sb.0 as isize,
            sb.1 as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    c
}

/// Width of the column panels [`gram_f64_of_f32`] converts at a time. At
/// 256 columns a 128-row f64 panel (256 KiB) is still in cache when the
/// product packs it; and 256 is matrixmultiply's own k-block for f64, so the
/// sums are grouped exactly as in one long product (the panel width does
/// not change a bit of the result).
const GRAM_PANEL: usize = 256;
/// Row-block size of [`gram_f64_of_f32`]'s lower strips.
const GRAM_BLOCK: usize = 64;

/// Σ x² of `row` in f64, in eight interleaved partial sums (a fixed order,
/// so deterministic; independent chains, so fast), then added in order.
pub fn sum_sq_f64(row: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v as f64) * (v as f64);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The Gram matrix `a·aᵀ` (m×m, f64) of the rows of the row-major f32
/// matrix `a` (m×k), accumulated in f64: products of f32 numbers are exact
/// in f64, so only the f64 summation rounds. It works through column panels
/// converted to f64 one at a time (no m×k f64 copy) and computes, per block
/// of rows, only the strip up to and including the diagonal block,
/// mirroring the rest. The summation order of every entry is fixed, so the
/// result is deterministic.
pub fn gram_f64_of_f32(m: usize, k: usize, a: &[f32]) -> Vec<f64> {
    gram_f64_of_f32_groups(m, k, a, &[])
}

/// [`gram_f64_of_f32`] for a matrix some of whose row groups the caller
/// knows to be orthogonal (`groups`: disjoint ranges of rows). Inside a
/// group the Gram block is taken as diagonal: its off-diagonal entries read
/// 0 and its diagonal is each row's [`sum_sq_f64`]; block rows that lie
/// wholly inside a group compute only the columns before it. Every other
/// entry is the full Gram's. Frequent Directions uses it for the rows a
/// shrink leaves, orthogonal by construction: in steady state a shrink
/// then computes only the new rows' blocks, and a merge of two compact
/// sketches only their cross block.
pub fn gram_f64_of_f32_groups(m: usize, k: usize, a: &[f32], groups: &[std::ops::Range<usize>]) -> Vec<f64> {
    gram_f64_of_f32_groups_split(m, k, a, groups, Split::Whole)
}

/// [`gram_f64_of_f32_groups`] with its strips in `split`'s pieces: with
/// [`Split::Halves`], each panel's strips are cut at a block row into two
/// sets of about the same work, computed side by side. Each entry is still
/// made by the same product over the same panels in the same order, so the
/// result is bit-identical to [`Split::Whole`]'s.
pub fn gram_f64_of_f32_groups_split(
    m: usize,
    k: usize,
    a: &[f32],
    groups: &[std::ops::Range<usize>],
    split: Split,
) -> Vec<f64> {
    assert!(a.len() >= m * k, "gram_f64_of_f32: slice too short");
    assert!(groups.iter().all(|g| g.start <= g.end && g.end <= m), "gram_f64_of_f32: group outside the matrix");
    let mut c = vec![0.0; m * m];
    if m == 0 || k == 0 {
        return c;
    }
    // Per block row: the columns to compute (all of 0..=diagonal block,
    // or only those before the group it lies in).
    let strips: Vec<(usize, usize, usize)> = (0..m)
        .step_by(GRAM_BLOCK)
        .map(|i0| {
            let bi = GRAM_BLOCK.min(m - i0);
            let inside = groups.iter().find(|g| g.start <= i0 && i0 + bi <= g.end);
            (i0, bi, inside.map_or(i0 + bi, |g| g.start))
        })
        .filter(|&(_, _, nj)| nj > 0)
        .collect();
    // Where the strips are cut in two (by work: bi·nj), for Halves.
    let cut = match split {
        Split::Whole => strips.len(),
        Split::Halves => {
            let total: usize = strips.iter().map(|&(_, bi, nj)| bi * nj).sum();
            let mut acc = 0;
            strips
                .iter()
                .position(|&(_, bi, nj)| {
                    acc += bi * nj;
                    2 * acc > total
                })
                .map_or(strips.len(), |p| p + 1)
                .min(strips.len())
        }
    };
    let (first, second) = strips.split_at(cut);
    let mut panel = vec![0.0f64; m * GRAM_PANEL.min(k)];
    for start in (0..k).step_by(GRAM_PANEL) {
        let w = GRAM_PANEL.min(k - start);
        for i in 0..m {
            let src = &a[i * k + start..i * k + start + w];
            panel[i * w..(i + 1) * w].iter_mut().zip(src).for_each(|(p, &x)| *p = x as f64);
        }
        // One product per block of rows: the strip from column 0 through
        // its diagonal block (long strips keep the kernel busy).
        let panel = &panel[..m * w];
        match second.first() {
            None => gram_strips(m, w, panel, first, &mut c, 0),
            Some(&(row, _, _)) => {
                let (top, bottom) = c.split_at_mut(row * m);
                rayon::join(
                    || gram_strips(m, w, panel, first, top, 0),
                    || gram_strips(m, w, panel, second, bottom, row),
                );
            }
        }
    }
    for g in groups {
        for i in g.clone() {
            c[i * m + g.start..i * m + i].fill(0.0);
            c[i * m + i] = sum_sq_f64(&a[i * k..(i + 1) * k]);
        }
    }
    for i in 0..m {
        for j in (i + 1)..m {
            c[i * m + j] = c[j * m + i];
        }
    }
    c
}

/// Adds, for each strip `(i0, bi, nj)`, the panel's rows `i0..i0+bi` times
/// its rows `0..nj` (transposed) into rows `i0..i0+bi`, columns `0..nj`, of
/// the m×m matrix whose rows from `row0` on are `out`.
fn gram_strips(m: usize, w: usize, panel: &[f64], strips: &[(usize, usize, usize)], out: &mut [f64], row0: usize) {
    for &(i0, bi, nj) in strips {
        assert!(i0 >= row0 && (i0 + bi - row0) * m <= out.len() && nj <= i0 + bi && (i0 + bi) * w <= panel.len());
        #[allow(unsafe_code)]
        // SAFETY: rows i0..i0+bi and 0..nj of the m×w panel are in bounds
        // (nj ≤ i0 + bi, (i0 + bi)·w ≤ its length); the output strip (rows
        // i0−row0.., columns 0..nj) of `out` is in bounds (asserted), and
        // `out` does not alias the panel.
        unsafe {
            matrixmultiply::dgemm(
                bi,
                w,
                nj,
                1.0,
                panel.as_ptr().add(i0 * w),
                w as isize,
                1,
                panel.as_ptr(),
                1,
                w as isize,
                1.0,
                out.as_mut_ptr().add((i0 - row0) * m),
                m as isize,
                1,
            );
        }
    }
}

/// How a dense computation is cut into pieces. The cut decides the bits of
/// the result; the threads that run the pieces decide only the time: the
/// pieces run on the current rayon pool, side by side when it has threads
/// to spare, one after the other when it has one, with the same result.
/// A computation's callers fix its cut (a merge of sketches always uses
/// [`Split::Halves`], a worker's streaming shrinks [`Split::Whole`]), so
/// the same inputs give the same bits on any machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One piece: the calling thread does all of it.
    Whole,
    /// Two fixed pieces (faer's parallel solver at degree 2, products cut
    /// in two by rows or columns).
    Halves,
}

impl Split {
    fn par(self) -> faer::Par {
        match self {
            Split::Whole => faer::Par::Seq,
            Split::Halves => faer::Par::rayon(2),
        }
    }
}

/// Eigen-decomposition of a symmetric matrix.
#[derive(Debug, Clone)]
pub struct SymEigen {
    /// Eigenvalues, in descending order.
    pub values: Vec<f64>,
    /// Eigenvectors as rows: `vectors[i*n..(i+1)*n]` belongs to `values[i]`.
    pub vectors: Vec<f64>,
}

/// Below this order [`sym_eigen`] uses the hand-written EISPACK pair, from
/// it on faer's blocked solver. Measured with `fd_profile`: at 128 the two
/// take about the same time, at 256 faer is about twice as fast, at 2,048
/// about twenty times.
pub const FAER_MIN_ORDER: usize = 160;

/// Eigen-decomposition of the symmetric `n×n` row-major matrix `a`. Only the
/// lower triangle is read. Small matrices (below [`FAER_MIN_ORDER`]) go
/// through Householder tridiagonalisation and implicit QL (the EISPACK
/// `tred2`/`tql2` pair, bit-identical with and without AVX); larger ones
/// through faer's blocked tridiagonalisation and divide and conquer, run
/// sequentially so that the result does not depend on a thread count.
pub fn sym_eigen(n: usize, a: &[f64]) -> SymEigen {
    sym_eigen_with(n, a, EigenSolver::ByOrder, Split::Whole)
}

/// Which dense symmetric eigensolver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EigenSolver {
    /// By order, as [`sym_eigen`] does: EISPACK below [`FAER_MIN_ORDER`],
    /// faer from it on.
    ByOrder,
    /// Householder tridiagonalisation and implicit QL, hand-written (always
    /// whole); benchmarks compare it with faer.
    Eispack,
    /// faer's blocked tridiagonalisation and divide and conquer.
    Faer,
}

/// [`sym_eigen`] with the solver and the cut chosen by the caller. faer's
/// solver runs at degree 2 for [`Split::Halves`] (its parallel
/// tridiagonalisation sums fixed column ranges' partial products in a
/// fixed order: the same bits on a pool of one thread or of many, but not
/// the bits of [`Split::Whole`]); the EISPACK pair always runs whole.
pub fn sym_eigen_with(n: usize, a: &[f64], solver: EigenSolver, split: Split) -> SymEigen {
    assert_eq!(a.len(), n * n, "sym_eigen: wrong size");
    if n == 0 {
        return SymEigen { values: vec![], vectors: vec![] };
    }
    match solver {
        EigenSolver::ByOrder if n >= FAER_MIN_ORDER => faer_eigen(n, a, true, split),
        EigenSolver::Faer => faer_eigen(n, a, true, split),
        EigenSolver::ByOrder | EigenSolver::Eispack => eispack_eigen(n, a),
    }
}

/// The eigenvalues of the symmetric `n×n` row-major matrix `a`, descending
/// (lower triangle read). Cheaper than [`sym_eigen`] for large `n`: no
/// eigenvectors are formed.
pub fn sym_eigenvalues(n: usize, a: &[f64]) -> Vec<f64> {
    assert_eq!(a.len(), n * n, "sym_eigenvalues: wrong size");
    if n >= FAER_MIN_ORDER {
        return faer_eigen(n, a, false, Split::Whole).values;
    }
    sym_eigen(n, a).values
}

/// faer's self-adjoint eigendecomposition (cut as `split` says),
/// eigenvalues descending, eigenvectors (when asked for) as rows in the
/// same order.
/// Should faer report that its QR iteration did not converge (it never has
/// on a finite symmetric matrix), the EISPACK pair answers instead.
fn faer_eigen(n: usize, a: &[f64], vectors: bool, split: Split) -> SymEigen {
    use faer::dyn_stack::{MemBuffer, MemStack};
    use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
    let m = faer::MatRef::from_row_major_slice(a, n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut u = if vectors { faer::Mat::<f64>::zeros(n, n) } else { faer::Mat::<f64>::zeros(0, 0) };
    let compute = if vectors { ComputeEigenvectors::Yes } else { ComputeEigenvectors::No };
    let par = split.par();
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(n, compute, par, Default::default()));
    let ok =
        self_adjoint_evd(m, s.as_mut(), vectors.then(|| u.as_mut()), par, MemStack::new(&mut mem), Default::default());
    if ok.is_err() {
        return eispack_eigen(n, a);
    }
    // faer sorts ascending: read both back to front.
    let values: Vec<f64> = (0..n).rev().map(|i| s[i]).collect();
    let mut out = Vec::new();
    if vectors {
        out.reserve_exact(n * n);
        for j in (0..n).rev() {
            out.extend(u.col(j).iter().copied());
        }
    }
    SymEigen { values, vectors: out }
}

/// [`sym_eigen`] by the EISPACK pair, at any order.
fn eispack_eigen(n: usize, a: &[f64]) -> SymEigen {
    // Working copy, stored column-major (symmetric, so the same numbers).
    let mut v: Vec<f64> = a.to_vec();
    for i in 0..n {
        for j in 0..i {
            v[j * n + i] = v[i * n + j];
        }
    }
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tridiagonalise_and_solve(n, &mut v, &mut d, &mut e);
    // Columns of v are eigenvectors; sort descending.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| d[y].partial_cmp(&d[x]).unwrap_or(std::cmp::Ordering::Equal));
    let values = order.iter().map(|&i| d[i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (r, &col) in order.iter().enumerate() {
        for i in 0..n {
            vectors[r * n + i] = v[col * n + i];
        }
    }
    SymEigen { values, vectors }
}

/// `tred2` then `tql2`, compiled for AVX when the CPU has it: their
/// element-wise loops then run four lanes wide instead of two. The result is
/// bit-identical either way, because no multiply is fused with an add and no
/// sum is reordered (the compiler may not reassociate floating-point sums;
/// [`dot`]'s partial sums are explicit), so workers with and without AVX
/// agree.
fn tridiagonalise_and_solve(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        #[allow(unsafe_code)]
        // SAFETY: the CPU supports AVX, checked just above.
        unsafe {
            tridiagonalise_and_solve_avx(n, v, d, e)
        };
        return;
    }
    tred2(n, v, d, e);
    tql2(n, v, d, e);
}

/// [`tridiagonalise_and_solve`] for CPUs with AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn tridiagonalise_and_solve_avx(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    tred2(n, v, d, e);
    tql2(n, v, d, e);
}

/// `√(a² + b²)`. In range it is two products, a sum and an IEEE square
/// root: the same bits on every machine, and much cheaper than the C
/// library's `hypot`, which it falls back to where the squares would
/// overflow or lose precision to underflow.
#[inline(always)]
fn pythag(a: f64, b: f64) -> f64 {
    let ss = a * a + b * b;
    if ss.is_finite() && ss > 1e-290 { ss.sqrt() } else { a.hypot(b) }
}

/// `Σ aᵢbᵢ` in four interleaved partial sums, added in a fixed order: four
/// independent chains instead of one keep the adder busy, and the result
/// depends only on the inputs, never on the machine.
#[inline(always)]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

#[inline(always)]
fn tred2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    // Column-major: the inner loops run down columns, contiguously.
    let idx = |i: usize, j: usize| j * n + i;
    for j in 0..n {
        d[j] = v[idx(n - 1, j)];
    }
    for i in (1..n).rev() {
        let mut scale = 0.0;
        let mut h = 0.0;
        for k in 0..i {
            scale += d[k].abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[idx(i - 1, j)];
                v[idx(i, j)] = 0.0;
                v[idx(j, i)] = 0.0;
            }
        } else {
            for k in 0..i {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for j in 0..i {
                e[j] = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[idx(j, i)] = f;
                let col = &v[idx(j + 1, j)..idx(i, j)];
                g = e[j] + v[idx(j, j)] * f + dot(col, &d[j + 1..i]);
                for (&vk, ek) in col.iter().zip(&mut e[j + 1..i]) {
                    *ek += vk * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                let col = &mut v[idx(j, j)..idx(i, j)];
                for ((vk, &ek), &dk) in col.iter_mut().zip(&e[j..i]).zip(&d[j..i]) {
                    *vk -= f * ek + g * dk;
                }
                d[j] = v[idx(i - 1, j)];
                v[idx(i, j)] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[idx(n - 1, i)] = v[idx(i, i)];
        v[idx(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[idx(k, i + 1)] / h;
            }
            for j in 0..=i {
                // Columns j ≤ i and i + 1 are disjoint.
                let (left, right) = v.split_at_mut(idx(0, i + 1));
                let (col_j, col_next) = (&mut left[idx(0, j)..idx(i + 1, j)], &right[..=i]);
                let g = dot(col_next, col_j);
                for (vk, &dk) in col_j.iter_mut().zip(&d[..=i]) {
                    *vk -= g * dk;
                }
            }
        }
        for k in 0..=i {
            v[idx(k, i + 1)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[idx(n - 1, j)];
        v[idx(n - 1, j)] = 0.0;
    }
    v[idx(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// `v` is column-major (see `tred2`): column `j` is `v[j*n..(j+1)*n]`.
#[inline(always)]
fn tql2(n: usize, v: &mut [f64], d: &mut [f64], e: &mut [f64]) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n {
            if e[m].abs() <= eps * tst1 {
                break;
            }
            m += 1;
        }
        if m == n {
            m = n - 1;
        }
        if m > l {
            let mut iter = 0;
            loop {
                iter += 1;
                if iter > 60 {
                    break; // converged as far as f64 allows
                }
                let mut g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = pythag(p, 1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for i in (l + 2)..n {
                    d[i] -= h;
                }
                f += h;
                p = d[m];
                let mut c = 1.0;
                let mut c2 = c;
                let mut c3 = c;
                let el1 = e[l + 1];
                let mut s = 0.0;
                let mut s2 = 0.0;
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    g = c * e[i];
                    h = c * p;
                    r = pythag(p, e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    // Rotate columns i and i + 1 (contiguous, disjoint).
                    let (left, right) = v.split_at_mut((i + 1) * n);
                    let (col_i, col_next) = (&mut left[i * n..], &mut right[..n]);
                    for (a, b) in col_i.iter_mut().zip(col_next.iter_mut()) {
                        let hb = *b;
                        *b = s * *a + c * hb;
                        *a = c * *a - s * hb;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

/// Projects `x` (length d) on each of the `k = out.len()` rows of `rows`
/// (k × d, f32): `out[i] = Σⱼ rows[i][j]·x[j]` in f64. Each sum runs in index
/// order from the same start as `Iterator::sum`, so every bit equals the
/// one-row-at-a-time `.map(..).sum()`; rows go four at a time in one pass
/// over `x`, so their four dependent chains of additions overlap instead of
/// running one after another (the per-step projection of a trajectory).
pub fn project_rows(rows: &[f32], x: &[f32], out: &mut [f64]) {
    let (k, d) = (out.len(), x.len());
    assert_eq!(rows.len(), k * d, "{k} rows of length {d}");
    // `Iterator::sum`'s neutral element (−0.0 in current Rust).
    let zero = std::iter::empty::<f64>().sum::<f64>();
    let mut i = 0;
    while i + 4 <= k {
        let r = [
            &rows[i * d..(i + 1) * d],
            &rows[(i + 1) * d..(i + 2) * d],
            &rows[(i + 2) * d..(i + 3) * d],
            &rows[(i + 3) * d..(i + 4) * d],
        ];
        let mut acc = [zero; 4];
        for (j, &xj) in x.iter().enumerate() {
            let xj = xj as f64;
            acc[0] += r[0][j] as f64 * xj;
            acc[1] += r[1][j] as f64 * xj;
            acc[2] += r[2][j] as f64 * xj;
            acc[3] += r[3][j] as f64 * xj;
        }
        out[i..i + 4].copy_from_slice(&acc);
        i += 4;
    }
    for (o, row) in out[i..].iter_mut().zip(rows[i * d..].chunks_exact(d.max(1))) {
        *o = row.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum();
    }
}

/// `k` orthonormal vectors of length `d` (rows of a k×d f32 matrix), drawn
/// uniformly (Gaussian vectors, modified Gram–Schmidt in f64).
pub fn random_orthonormal(k: usize, d: usize, rng: &mut Rng) -> Vec<f32> {
    assert!(k <= d, "cannot draw {k} orthonormal directions in {d} dimensions");
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(k);
    while q.len() < k {
        let mut v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
        for _ in 0..2 {
            for u in &q {
                let dot: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(x, y)| *x -= dot * y);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-8 {
            v.iter_mut().for_each(|x| *x /= norm);
            q.push(v);
        }
    }
    q.into_iter().flatten().map(|x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 Gram from its lower strips is the whole product, bit for bit.
    #[test]
    fn the_f64_gram_from_lower_strips_is_the_whole_product() {
        let mut r = Rng::new(4, crate::rng::Stream::Other(2));
        for (m, k) in [(1usize, 1usize), (3, 700), (64, 300), (131, 1100)] {
            let a: Vec<f64> = (0..m * k).map(|_| r.normal()).collect();
            let whole = dgemm_strided(m, k, m, &a, (k, 1), &a, (1, k));
            let strips = gram_f64(m, k, &a);
            assert!(whole.iter().zip(&strips).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}×{k}");
        }
    }

    /// The Gram matrix cut in two (strips side by side) is the whole one,
    /// bit for bit, with and without orthogonal groups and at sizes that
    /// leave a short last strip and panel.
    #[test]
    fn a_gram_cut_in_two_is_the_whole_one() {
        let mut rng = Rng::new(5, crate::rng::Stream::Other(1));
        for (m, k) in [(1usize, 10usize), (3, 300), (130, 517), (257, 1000)] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
            let groups: [&[std::ops::Range<usize>]; 2] = [&[], &[0..m / 2, m / 2..m]];
            for g in groups {
                let whole = gram_f64_of_f32_groups_split(m, k, &a, g, Split::Whole);
                let halves = gram_f64_of_f32_groups_split(m, k, &a, g, Split::Halves);
                assert!(whole.iter().zip(&halves).all(|(x, y)| x.to_bits() == y.to_bits()), "m = {m}, k = {k}");
            }
        }
    }

    /// The fused projection is the one-row-at-a-time sum, bit for bit: for
    /// k = 1…9 (four-row blocks and the rest), random values, and a row and
    /// an input of signed zeros (the sum's neutral element decides the sign).
    #[test]
    fn projecting_rows_together_changes_no_bit() {
        let mut rng = Rng::new(7, crate::rng::Stream::Other(3));
        for k in 1..=9 {
            let d = 37;
            let mut rows: Vec<f32> = (0..k * d).map(|_| rng.normal() as f32).collect();
            let mut x: Vec<f32> = (0..d).map(|_| (rng.normal() * 1e3) as f32).collect();
            if k == 9 {
                rows[..d].fill(-0.0);
                x.iter_mut().step_by(2).for_each(|v| *v = -0.0);
            }
            let mut got = vec![f64::NAN; k];
            project_rows(&rows, &x, &mut got);
            for i in 0..k {
                let want: f64 = rows[i * d..(i + 1) * d].iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                assert_eq!(got[i].to_bits(), want.to_bits(), "k = {k}, row {i}");
            }
        }
    }
    use crate::rng::Stream;

    #[test]
    fn eigen_reconstructs_random_symmetric() {
        let mut r = Rng::new(0, Stream::Other(0));
        for &n in &[1usize, 2, 5, 17, 40] {
            let mut a = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..=i {
                    let x = r.normal();
                    a[i * n + j] = x;
                    a[j * n + i] = x;
                }
            }
            let e = sym_eigen(n, &a);
            assert!(e.values.windows(2).all(|w| w[0] >= w[1]));
            for i in 0..n {
                for j in 0..n {
                    let s: f64 = (0..n).map(|k| e.values[k] * e.vectors[k * n + i] * e.vectors[k * n + j]).sum();
                    assert!((s - a[i * n + j]).abs() < 1e-9, "n={n} ({i},{j}) {s} vs {}", a[i * n + j]);
                }
            }
        }
    }

    /// The AVX build of the solver and the baseline one give the same bits,
    /// so workers with and without AVX agree.
    /// faer (used from [`FAER_MIN_ORDER`] on) and the EISPACK pair agree on
    /// eigenvalues to rounding, their eigenvectors are orthonormal and
    /// satisfy `A v = λ v`, and the values-only path gives the same values.
    #[test]
    fn faer_and_eispack_agree() {
        let mut rng = Rng::new(8, Stream::Other(21));
        for n in [3usize, 40, FAER_MIN_ORDER, 300] {
            // A Gram matrix with a decaying spectrum, as in a shrink.
            let k = n + 5;
            let rows: Vec<f64> = (0..n * k).map(|i| rng.normal() / (1.0 + (i / k) as f64).powf(1.5)).collect();
            let a = gram_f64(n, k, &rows);
            let (x, y) = (
                sym_eigen_with(n, &a, EigenSolver::Eispack, Split::Whole),
                sym_eigen_with(n, &a, EigenSolver::Faer, Split::Whole),
            );
            let top = x.values[0];
            for i in 0..n {
                assert!(
                    (x.values[i] - y.values[i]).abs() <= 1e-12 * top,
                    "n={n} λ{i}: {} vs {}",
                    x.values[i],
                    y.values[i]
                );
            }
            assert!(y.values.windows(2).all(|w| w[0] >= w[1]), "descending");
            // The values-only path (QR on the tridiagonal matrix, not divide
            // and conquer) agrees to rounding.
            for (p, q) in sym_eigenvalues(n, &a).iter().zip(&sym_eigen(n, &a).values) {
                assert!((p - q).abs() <= 1e-12 * top, "n={n}: {p} vs {q}");
            }
            for e in [&x, &y] {
                for i in 0..n {
                    let v = &e.vectors[i * n..(i + 1) * n];
                    let norm: f64 = v.iter().map(|t| t * t).sum();
                    assert!((norm - 1.0).abs() < 1e-10, "n={n} ‖v{i}‖² = {norm}");
                    let res: f64 = (0..n)
                        .map(|r| ((0..n).map(|c| a[r * n + c] * v[c]).sum::<f64>() - e.values[i] * v[r]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    assert!(res <= 1e-10 * top, "n={n} residual of v{i}: {res}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn eigen_is_bit_identical_with_and_without_avx() {
        if !std::arch::is_x86_feature_detected!("avx") {
            return;
        }
        let mut r = Rng::new(5, Stream::Other(2));
        for &n in &[2usize, 7, 33, 128] {
            let a: Vec<f64> = (0..n * n).map(|_| r.normal()).collect();
            let sym: Vec<f64> = (0..n * n).map(|x| a[x] + a[(x % n) * n + x / n]).collect();
            let solve = |avx: bool| {
                let (mut v, mut d, mut e) = (sym.clone(), vec![0.0; n], vec![0.0; n]);
                if avx {
                    #[allow(unsafe_code)]
                    // SAFETY: AVX support was checked above.
                    unsafe {
                        tridiagonalise_and_solve_avx(n, &mut v, &mut d, &mut e)
                    };
                } else {
                    tred2(n, &mut v, &mut d, &mut e);
                    tql2(n, &mut v, &mut d, &mut e);
                }
                v.iter().chain(&d).map(|x| x.to_bits()).collect::<Vec<u64>>()
            };
            assert_eq!(solve(true), solve(false), "n = {n}");
        }
    }

    #[test]
    fn eigen_of_diagonal_and_degenerate() {
        let a = [3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let e = sym_eigen(3, &a);
        assert_eq!(e.values.len(), 3);
        assert!((e.values[0] - 3.0).abs() < 1e-12 && (e.values[1] - 3.0).abs() < 1e-12);
        assert!(e.values[2].abs() < 1e-12);
    }

    /// With orthogonal groups, every entry outside them is the full
    /// Gram's; inside a group the block is diagonal, with each row's f64
    /// sum of squares on it (groups aligned with the block rows or not).
    #[test]
    fn gram_with_orthogonal_groups_computes_the_rest() {
        let mut r = Rng::new(3, Stream::Other(7));
        let (m, k) = (200usize, 2100usize);
        let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
        let full = gram_f64_of_f32(m, k, &a);
        let cases: [&[std::ops::Range<usize>]; 5] = [&[], &[0..1], &[0..64], &[0..70, 70..200], &[3..130, 140..141]];
        for groups in cases {
            let g = gram_f64_of_f32_groups(m, k, &a, groups);
            let group = |i: usize| groups.iter().position(|g| g.contains(&i));
            for i in 0..m {
                for j in 0..m {
                    let want = match (group(i), group(j)) {
                        (Some(x), Some(y)) if x == y => {
                            if i == j {
                                sum_sq_f64(&a[i * k..(i + 1) * k])
                            } else {
                                0.0
                            }
                        }
                        _ => full[i * m + j],
                    };
                    assert_eq!(g[i * m + j], want, "groups {groups:?}: entry ({i}, {j})");
                }
            }
        }
    }

    /// Panels and blocks of every kind: partial last panel and block, m
    /// below, at and above the block size; symmetric, and equal to the
    /// f64 Gram of the same numbers.
    #[test]
    fn gram_of_f32_matches_the_f64_gram() {
        let mut r = Rng::new(2, Stream::Other(7));
        for (m, k) in [(1usize, 3usize), (5, 700), (64, 512), (130, 1100)] {
            let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
            let g = gram_f64_of_f32(m, k, &a);
            let a64: Vec<f64> = a.iter().map(|&x| x as f64).collect();
            let want = gram_f64(m, k, &a64);
            for i in 0..m {
                for j in 0..m {
                    assert_eq!(g[i * m + j], g[j * m + i]);
                    // Products of f32 numbers are exact in f64, and the sums
                    // are grouped as in one long product: equal to the bit.
                    assert_eq!(g[i * m + j].to_bits(), want[i * m + j].to_bits(), "({i}, {j}) of {m}×{k}");
                }
            }
        }
    }

    #[test]
    fn gemm_variants_agree_with_naive() {
        let (m, k, n) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let mut c = vec![0.0; m * n];
        sgemm(m, k, n, 1.0, &a, &b, 0.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                assert!((s - c[i * n + j]).abs() < 1e-5);
            }
        }
        // bt: n×k
        let bt: Vec<f32> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
        let mut c2 = vec![0.0; m * n];
        sgemm_nt(m, k, n, 1.0, &a, &bt, 0.0, &mut c2);
        assert_eq!(c, c2);
        let at: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
        let mut c3 = vec![0.0; m * n];
        sgemm_tn(m, k, n, 1.0, &at, &b, 0.0, &mut c3);
        for (x, y) in c.iter().zip(&c3) {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn orthonormal_directions_are_orthonormal() {
        let mut r = Rng::new(5, Stream::Projection);
        let q = random_orthonormal(6, 50, &mut r);
        for i in 0..6 {
            for j in 0..6 {
                let dot: f32 = (0..50).map(|t| q[i * 50 + t] * q[j * 50 + t]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-5);
            }
        }
    }
}
