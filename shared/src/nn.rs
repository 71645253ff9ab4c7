//! Layers with forward, backward and exact per-sample gradients.
//!
//! Activations are row-major `batch × features`, where a sample's features
//! are laid out channel-major (`C × H × W`). Trainable parameters live in
//! the run's flat vector, layer by layer; non-trainable state (BatchNorm's
//! running mean and variance) lives in a second flat vector, the *buffers*.
//!
//! **Modes.** In [`Mode::Train`] BatchNorm normalises with batch statistics
//! and updates its running averages, and Dropout drops units with the run's
//! generator. In [`Mode::Eval`] BatchNorm uses its running statistics and
//! Dropout is the identity. Per-sample gradients — the rows of the matrix
//! whose covariance is `D(x)` — are defined and computed in eval mode, as in
//! the paper: only then is each sample's loss a function of that sample
//! alone.
//!
//! The loss is softmax cross-entropy; the backward pass receives its error
//! already scaled (by `1/b` for a mean-loss batch gradient, by 1 for
//! per-sample gradients) and each layer either accumulates its parameter
//! gradient over the batch or writes one row segment per sample.

use crate::linalg::{View, sgemm, sgemm_nt, sgemm_tn, sgemm_view};
use crate::rng::Rng;

/// Train or evaluation behaviour of BatchNorm and Dropout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, running averages updated, dropout active.
    Train,
    /// Running statistics, no dropout.
    Eval,
}

/// Shape of one sample's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Channels (features for dense layers).
    pub c: usize,
    /// Height (1 for dense layers).
    pub h: usize,
    /// Width (1 for dense layers).
    pub w: usize,
}

impl Shape {
    /// A flat feature vector.
    pub fn flat(n: usize) -> Self {
        Shape { c: n, h: 1, w: 1 }
    }

    /// Number of values.
    pub fn size(&self) -> usize {
        self.c * self.h * self.w
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.h == 1 && self.w == 1 { write!(f, "{}", self.c) } else { write!(f, "{}x{}x{}", self.c, self.h, self.w) }
    }
}

/// BatchNorm's momentum for running averages (PyTorch's default).
pub const BN_MOMENTUM: f32 = 0.1;
/// BatchNorm's ε.
pub const BN_EPS: f32 = 1e-5;

/// A layer kind with its hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    /// Fully connected: `y = W x + b`, `W` is `out × in`.
    Linear {
        /// Output features.
        out: usize,
    },
    /// 2-d convolution with bias, weights `out × (in·k·k)`.
    Conv2d {
        /// Output channels.
        out: usize,
        /// Kernel size.
        k: usize,
        /// Stride.
        stride: usize,
        /// Zero padding.
        pad: usize,
    },
    /// Max pooling (no padding).
    MaxPool2d {
        /// Window.
        k: usize,
        /// Stride.
        stride: usize,
    },
    /// Mean over each channel's spatial positions.
    GlobalAvgPool,
    /// Batch normalisation over channels (1-d for flat inputs, 2-d otherwise).
    BatchNorm,
    /// Inverted dropout with drop probability `p` (train mode only).
    Dropout {
        /// Drop probability.
        p: f32,
    },
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// Reshape `C×H×W` to a flat vector (data layout unchanged).
    Flatten,
}

/// A layer placed in a network: its kind, shapes and offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// What it computes.
    pub kind: LayerKind,
    /// Input shape.
    pub input: Shape,
    /// Output shape.
    pub output: Shape,
    /// Offset of its parameters in the flat vector.
    pub offset: usize,
    /// Number of parameters.
    pub params: usize,
    /// Offset of its buffers.
    pub buf_offset: usize,
    /// Number of buffers.
    pub buffers: usize,
}

/// What a layer keeps from its forward pass for the backward pass.
#[derive(Debug, Default)]
pub struct Cache {
    /// Layer input.
    x: Vec<f32>,
    /// Layer output (ReLU, Tanh).
    y: Vec<f32>,
    /// Per-sample im2col matrices (conv), or x̂ (BatchNorm), or dropout mask.
    aux: Vec<f32>,
    /// Argmax positions (max pooling).
    idx: Vec<u32>,
    /// Per-channel 1/σ (BatchNorm).
    inv_std: Vec<f32>,
    /// Normalised with batch statistics (BatchNorm in train mode).
    batch_stats: bool,
}

/// Where per-sample gradient rows go: `out` is `b × d`, this layer's
/// segment starts at column `offset`.
pub struct PerSampleOut<'a> {
    /// The `b × d` matrix.
    pub out: &'a mut [f32],
    /// Row length d.
    pub d: usize,
}

impl Layer {
    /// Places `kind` after a layer producing `input`.
    pub fn new(kind: LayerKind, input: Shape, offset: usize, buf_offset: usize) -> Result<Self, String> {
        let (output, params, buffers) = match &kind {
            LayerKind::Linear { out } => (Shape::flat(*out), input.size() * out + out, 0),
            LayerKind::Conv2d { out, k, stride, pad } => {
                if input.h + 2 * pad < *k || input.w + 2 * pad < *k || *stride == 0 {
                    return Err(format!("conv {k}x{k} does not fit input {input}"));
                }
                let oh = (input.h + 2 * pad - k) / stride + 1;
                let ow = (input.w + 2 * pad - k) / stride + 1;
                (Shape { c: *out, h: oh, w: ow }, out * input.c * k * k + out, 0)
            }
            LayerKind::MaxPool2d { k, stride } => {
                if input.h < *k || input.w < *k || *stride == 0 {
                    return Err(format!("maxpool {k} does not fit input {input}"));
                }
                (Shape { c: input.c, h: (input.h - k) / stride + 1, w: (input.w - k) / stride + 1 }, 0, 0)
            }
            LayerKind::GlobalAvgPool => (Shape::flat(input.c), 0, 0),
            LayerKind::BatchNorm => (input, 2 * input.c, 2 * input.c),
            LayerKind::Dropout { .. } | LayerKind::Relu | LayerKind::Tanh => (input, 0, 0),
            LayerKind::Flatten => (Shape::flat(input.size()), 0, 0),
        };
        Ok(Layer { kind, input, output, offset, params, buf_offset, buffers })
    }

    /// A short description, e.g. `conv5x5 1x28x28->8x24x24 (208)`.
    pub fn describe(&self) -> String {
        let k = match &self.kind {
            LayerKind::Linear { .. } => "linear".to_string(),
            LayerKind::Conv2d { k, stride, pad, .. } => format!("conv{k}x{k}/s{stride}p{pad}"),
            LayerKind::MaxPool2d { k, stride } => format!("maxpool{k}/s{stride}"),
            LayerKind::GlobalAvgPool => "avgpool".into(),
            LayerKind::BatchNorm => if self.input.h * self.input.w == 1 { "bn1d" } else { "bn2d" }.into(),
            LayerKind::Dropout { p } => format!("dropout{p}"),
            LayerKind::Relu => "relu".into(),
            LayerKind::Tanh => "tanh".into(),
            LayerKind::Flatten => "flatten".into(),
        };
        if self.params > 0 {
            format!("{k} {}->{} ({})", self.input, self.output, self.params)
        } else {
            format!("{k} {}->{}", self.input, self.output)
        }
    }

    /// Initial parameters and buffers: He-normal weights (std √(2/fan_in)),
    /// zero biases; BatchNorm γ = 1, β = 0, running mean 0, variance 1.
    pub fn init(&self, p: &mut [f32], buf: &mut [f32], rng: &mut Rng) {
        match &self.kind {
            LayerKind::Linear { out } => {
                let fan_in = self.input.size();
                let std = (2.0 / fan_in as f64).sqrt();
                p[..fan_in * out].iter_mut().for_each(|w| *w = (rng.normal() * std) as f32);
            }
            LayerKind::Conv2d { out, k, .. } => {
                let fan_in = self.input.c * k * k;
                let std = (2.0 / fan_in as f64).sqrt();
                p[..fan_in * out].iter_mut().for_each(|w| *w = (rng.normal() * std) as f32);
            }
            LayerKind::BatchNorm => {
                let c = self.input.c;
                p[..c].iter_mut().for_each(|g| *g = 1.0);
                buf[c..2 * c].iter_mut().for_each(|v| *v = 1.0);
            }
            _ => {}
        }
    }

    /// Forward over `b` samples. `p`/`buf` are this layer's slices; `rng`
    /// draws dropout masks in train mode.
    pub fn forward(
        &self,
        p: &[f32],
        buf: &mut [f32],
        x: Vec<f32>,
        b: usize,
        mode: Mode,
        rng: &mut Rng,
    ) -> (Vec<f32>, Cache) {
        let (isz, osz) = (self.input.size(), self.output.size());
        let mut cache = Cache::default();
        let y = match &self.kind {
            LayerKind::Linear { out } => {
                let (w, bias) = p.split_at(isz * out);
                let mut y = vec![0.0f32; b * out];
                y.chunks_exact_mut(*out).for_each(|r| r.copy_from_slice(bias));
                sgemm_nt(b, isz, *out, 1.0, &x, w, 1.0, &mut y);
                cache.x = x;
                y
            }
            LayerKind::Conv2d { out, k, stride, pad } => {
                // One product over the whole batch: cols is K × (b·L), with
                // sample s in columns s·L..(s+1)·L; Y' = W · cols is out × (b·L).
                let kk = self.input.c * k * k;
                let l = self.output.h * self.output.w;
                let bl = b * l;
                let (w, bias) = p.split_at(kk * out);
                let mut cols = vec![0.0f32; kk * bl];
                for s in 0..b {
                    im2col(
                        &x[s * isz..(s + 1) * isz],
                        self.input,
                        *k,
                        *stride,
                        *pad,
                        self.output,
                        &mut cols,
                        bl,
                        s * l,
                    );
                }
                let mut yt = vec![0.0f32; out * bl];
                sgemm(*out, kk, bl, 1.0, w, &cols, 0.0, &mut yt);
                let mut y = vec![0.0f32; b * osz];
                for s in 0..b {
                    for o in 0..*out {
                        let src = &yt[o * bl + s * l..o * bl + (s + 1) * l];
                        let dst = &mut y[s * osz + o * l..s * osz + (o + 1) * l];
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d = v + bias[o]);
                    }
                }
                cache.aux = cols;
                y
            }
            LayerKind::MaxPool2d { k, stride } => {
                let (c, ih, iw) = (self.input.c, self.input.h, self.input.w);
                let (oh, ow) = (self.output.h, self.output.w);
                let mut y = vec![0.0f32; b * osz];
                let mut idx = vec![0u32; b * osz];
                for s in 0..b {
                    for ch in 0..c {
                        let base = s * isz + ch * ih * iw;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let mut best = (f32::NEG_INFINITY, 0usize);
                                for ky in 0..*k {
                                    for kx in 0..*k {
                                        let at = base + (oy * stride + ky) * iw + ox * stride + kx;
                                        if x[at] > best.0 {
                                            best = (x[at], at);
                                        }
                                    }
                                }
                                let o = s * osz + ch * oh * ow + oy * ow + ox;
                                y[o] = best.0;
                                idx[o] = best.1 as u32;
                            }
                        }
                    }
                }
                cache.idx = idx;
                y
            }
            LayerKind::GlobalAvgPool => {
                let l = self.input.h * self.input.w;
                x.chunks_exact(l).map(|ch| ch.iter().sum::<f32>() / l as f32).collect()
            }
            LayerKind::BatchNorm => self.bn_forward(p, buf, x, b, mode, &mut cache),
            LayerKind::Dropout { p: drop } => {
                if mode == Mode::Eval || *drop <= 0.0 {
                    x
                } else {
                    let keep = 1.0 - *drop;
                    let mask: Vec<f32> =
                        (0..x.len()).map(|_| if rng.uniform() < keep as f64 { 1.0 / keep } else { 0.0 }).collect();
                    let y = x.iter().zip(&mask).map(|(a, m)| a * m).collect();
                    cache.aux = mask;
                    y
                }
            }
            LayerKind::Relu => {
                let y: Vec<f32> = x.into_iter().map(|v| v.max(0.0)).collect();
                cache.y = y.clone();
                y
            }
            LayerKind::Tanh => {
                let y: Vec<f32> = x.into_iter().map(f32::tanh).collect();
                cache.y = y.clone();
                y
            }
            LayerKind::Flatten => x,
        };
        (y, cache)
    }

    fn bn_forward(&self, p: &[f32], buf: &mut [f32], x: Vec<f32>, b: usize, mode: Mode, cache: &mut Cache) -> Vec<f32> {
        let c = self.input.c;
        let l = self.input.h * self.input.w;
        let (gamma, beta) = p.split_at(c);
        let (mean, var): (Vec<f32>, Vec<f32>) = if mode == Mode::Train {
            let n = (b * l) as f64;
            let mut mean = vec![0.0f64; c];
            let mut sq = vec![0.0f64; c];
            for s in 0..b {
                for ch in 0..c {
                    for &v in &x[(s * c + ch) * l..(s * c + ch + 1) * l] {
                        mean[ch] += v as f64;
                        sq[ch] += (v as f64) * (v as f64);
                    }
                }
            }
            let mut m32 = vec![0.0f32; c];
            let mut v32 = vec![0.0f32; c];
            for ch in 0..c {
                let m = mean[ch] / n;
                let v = (sq[ch] / n - m * m).max(0.0);
                m32[ch] = m as f32;
                v32[ch] = v as f32;
                // Running variance uses the unbiased estimate, as PyTorch does.
                let unbiased = if n > 1.0 { v * n / (n - 1.0) } else { v };
                buf[ch] = (1.0 - BN_MOMENTUM) * buf[ch] + BN_MOMENTUM * m as f32;
                buf[c + ch] = (1.0 - BN_MOMENTUM) * buf[c + ch] + BN_MOMENTUM * unbiased as f32;
            }
            cache.batch_stats = true;
            (m32, v32)
        } else {
            (buf[..c].to_vec(), buf[c..2 * c].to_vec())
        };
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        let mut xhat = x;
        let mut y = vec![0.0f32; xhat.len()];
        for s in 0..b {
            for ch in 0..c {
                let r = (s * c + ch) * l..(s * c + ch + 1) * l;
                for (xh, yv) in xhat[r.clone()].iter_mut().zip(&mut y[r]) {
                    *xh = (*xh - mean[ch]) * inv[ch];
                    *yv = gamma[ch] * *xh + beta[ch];
                }
            }
        }
        cache.aux = xhat;
        cache.inv_std = inv;
        y
    }

    /// Backward over `b` samples: given `dy`, returns `dx` (if `need_dx`).
    /// Parameter gradients are added into `grad` (this layer's slice), and
    /// per-sample rows written into `ps` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        cache: &Cache,
        dy: &[f32],
        b: usize,
        need_dx: bool,
        grad: Option<&mut [f32]>,
        mut ps: Option<&mut PerSampleOut<'_>>,
    ) -> Vec<f32> {
        let (isz, osz) = (self.input.size(), self.output.size());
        match &self.kind {
            LayerKind::Linear { out } => {
                let w = &p[..isz * out];
                if let Some(g) = grad {
                    let (gw, gb) = g.split_at_mut(isz * out);
                    sgemm_tn(*out, b, isz, 1.0, dy, &cache.x, 1.0, gw);
                    for row in dy.chunks_exact(*out) {
                        gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
                    }
                }
                if let Some(ps) = ps.as_deref_mut() {
                    for s in 0..b {
                        let row = &mut ps.out[s * ps.d + self.offset..s * ps.d + self.offset + self.params];
                        let a = &cache.x[s * isz..(s + 1) * isz];
                        let ds = &dy[s * out..(s + 1) * out];
                        let (rw, rb) = row.split_at_mut(isz * out);
                        for (r, &dv) in rw.chunks_exact_mut(isz).zip(ds) {
                            r.iter_mut().zip(a).for_each(|(g, &av)| *g = dv * av);
                        }
                        rb.copy_from_slice(ds);
                    }
                }
                let mut dx = Vec::new();
                if need_dx {
                    dx = vec![0.0f32; b * isz];
                    sgemm(b, *out, isz, 1.0, dy, w, 0.0, &mut dx);
                }
                dx
            }
            LayerKind::Conv2d { out, k, stride, pad } => {
                let kk = self.input.c * k * k;
                let l = self.output.h * self.output.w;
                let bl = b * l;
                let w = &p[..kk * out];
                let cols = &cache.aux;
                // dY' (out × b·L) from dy (b × out × L).
                let mut dyt = vec![0.0f32; out * bl];
                for s in 0..b {
                    for o in 0..*out {
                        dyt[o * bl + s * l..o * bl + (s + 1) * l]
                            .copy_from_slice(&dy[s * osz + o * l..s * osz + (o + 1) * l]);
                    }
                }
                if let Some(g) = grad {
                    let (gw, gb) = g.split_at_mut(kk * out);
                    sgemm_nt(*out, bl, kk, 1.0, &dyt, cols, 1.0, gw);
                    for (o, row) in dyt.chunks_exact(bl).enumerate() {
                        gb[o] += row.iter().sum::<f32>();
                    }
                }
                if let Some(ps) = ps.as_deref_mut() {
                    for s in 0..b {
                        let at = s * ps.d + self.offset;
                        // row_w (out × K) = dY'[:, sL..] (out × L) · cols[:, sL..]ᵀ (L × K)
                        sgemm_view(
                            *out,
                            l,
                            kk,
                            1.0,
                            &dyt,
                            View { offset: s * l, row_stride: bl, col_stride: 1 },
                            cols,
                            View { offset: s * l, row_stride: 1, col_stride: bl },
                            0.0,
                            ps.out,
                            View::rows(at, kk),
                        );
                        for o in 0..*out {
                            ps.out[at + kk * out + o] = dyt[o * bl + s * l..o * bl + (s + 1) * l].iter().sum();
                        }
                    }
                }
                let mut dx = Vec::new();
                if need_dx {
                    dx = vec![0.0f32; b * isz];
                    let mut dcols = vec![0.0f32; kk * bl];
                    sgemm_tn(kk, *out, bl, 1.0, w, &dyt, 0.0, &mut dcols);
                    for s in 0..b {
                        col2im(
                            &dcols,
                            self.input,
                            *k,
                            *stride,
                            *pad,
                            self.output,
                            &mut dx[s * isz..(s + 1) * isz],
                            bl,
                            s * l,
                        );
                    }
                }
                dx
            }
            LayerKind::MaxPool2d { .. } => {
                let mut dx = vec![0.0f32; b * isz];
                for (o, &d) in dy.iter().enumerate() {
                    dx[cache.idx[o] as usize] += d;
                }
                dx
            }
            LayerKind::GlobalAvgPool => {
                let l = self.input.h * self.input.w;
                let mut dx = vec![0.0f32; b * isz];
                for (chunk, &d) in dx.chunks_exact_mut(l).zip(dy) {
                    chunk.iter_mut().for_each(|v| *v = d / l as f32);
                }
                dx
            }
            LayerKind::BatchNorm => self.bn_backward(p, cache, dy, b, grad, ps),
            LayerKind::Dropout { .. } => {
                if cache.aux.is_empty() {
                    dy.to_vec()
                } else {
                    dy.iter().zip(&cache.aux).map(|(d, m)| d * m).collect()
                }
            }
            LayerKind::Relu => dy.iter().zip(&cache.y).map(|(d, &y)| if y > 0.0 { *d } else { 0.0 }).collect(),
            LayerKind::Tanh => dy.iter().zip(&cache.y).map(|(d, &y)| d * (1.0 - y * y)).collect(),
            LayerKind::Flatten => dy.to_vec(),
        }
    }

    fn bn_backward(
        &self,
        p: &[f32],
        cache: &Cache,
        dy: &[f32],
        b: usize,
        grad: Option<&mut [f32]>,
        ps: Option<&mut PerSampleOut<'_>>,
    ) -> Vec<f32> {
        let c = self.input.c;
        let l = self.input.h * self.input.w;
        let gamma = &p[..c];
        let xhat = &cache.aux;
        let inv = &cache.inv_std;
        // Σ dy and Σ dy·x̂ per channel (over the batch and positions).
        let mut sum_dy = vec![0.0f64; c];
        let mut sum_dy_xhat = vec![0.0f64; c];
        for s in 0..b {
            for ch in 0..c {
                let r = (s * c + ch) * l..(s * c + ch + 1) * l;
                for (d, xh) in dy[r.clone()].iter().zip(&xhat[r]) {
                    sum_dy[ch] += *d as f64;
                    sum_dy_xhat[ch] += (*d as f64) * (*xh as f64);
                }
            }
        }
        if let Some(g) = grad {
            for ch in 0..c {
                g[ch] += sum_dy_xhat[ch] as f32;
                g[c + ch] += sum_dy[ch] as f32;
            }
        }
        if let Some(ps) = ps {
            for s in 0..b {
                let row = &mut ps.out[s * ps.d + self.offset..s * ps.d + self.offset + self.params];
                for ch in 0..c {
                    let r = (s * c + ch) * l..(s * c + ch + 1) * l;
                    let (mut a, mut bsum) = (0.0f32, 0.0f32);
                    for (d, xh) in dy[r.clone()].iter().zip(&xhat[r]) {
                        a += d * xh;
                        bsum += d;
                    }
                    row[ch] = a;
                    row[c + ch] = bsum;
                }
            }
        }
        let mut dx = vec![0.0f32; b * self.input.size()];
        let n = (b * l) as f64;
        for s in 0..b {
            for ch in 0..c {
                let r = (s * c + ch) * l..(s * c + ch + 1) * l;
                let k = gamma[ch] * inv[ch];
                if cache.batch_stats {
                    let m_dy = (sum_dy[ch] / n) as f32;
                    let m_dyx = (sum_dy_xhat[ch] / n) as f32;
                    for ((o, d), xh) in dx[r.clone()].iter_mut().zip(&dy[r.clone()]).zip(&xhat[r]) {
                        *o = k * (d - m_dy - xh * m_dyx);
                    }
                } else {
                    for (o, d) in dx[r.clone()].iter_mut().zip(&dy[r]) {
                        *o = k * d;
                    }
                }
            }
        }
        dx
    }
}

/// The output columns `ox` whose input column `ox·stride + kx − pad` lies
/// inside `0..iw`, as a range.
fn valid_cols(ow: usize, iw: usize, stride: usize, kx: usize, pad: usize) -> std::ops::Range<usize> {
    // ox·stride + kx ≥ pad  and  ox·stride + kx − pad ≤ iw − 1
    let lo = if kx >= pad { 0 } else { (pad - kx).div_ceil(stride) };
    let hi = if iw + pad > kx { ((iw + pad - kx - 1) / stride + 1).min(ow) } else { 0 };
    lo.min(hi)..hi
}

/// Writes sample `x`'s patches into columns `at..at+L` of the `K × ld`
/// row-major matrix `col`.
#[allow(clippy::too_many_arguments)]
fn im2col(
    x: &[f32],
    input: Shape,
    k: usize,
    stride: usize,
    pad: usize,
    output: Shape,
    col: &mut [f32],
    ld: usize,
    at: usize,
) {
    let l = output.h * output.w;
    for c in 0..input.c {
        let plane = &x[c * input.h * input.w..(c + 1) * input.h * input.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let row = &mut col[r * ld + at..r * ld + at + l];
                let cols = valid_cols(output.w, input.w, stride, kx, pad);
                for oy in 0..output.h {
                    let dst = &mut row[oy * output.w..(oy + 1) * output.w];
                    let y = (oy * stride + ky) as isize - pad as isize;
                    if y < 0 || y >= input.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[y as usize * input.w..(y as usize + 1) * input.w];
                    dst[..cols.start].fill(0.0);
                    dst[cols.end..].fill(0.0);
                    let first = cols.start * stride + kx - pad;
                    if stride == 1 {
                        dst[cols.clone()].copy_from_slice(&src[first..first + cols.len()]);
                    } else {
                        for (i, v) in dst[cols.clone()].iter_mut().enumerate() {
                            *v = src[first + i * stride];
                        }
                    }
                }
            }
        }
    }
}

/// Adds columns `at..at+L` of the `K × ld` matrix `col` back into image `dx`.
#[allow(clippy::too_many_arguments)]
fn col2im(
    col: &[f32],
    input: Shape,
    k: usize,
    stride: usize,
    pad: usize,
    output: Shape,
    dx: &mut [f32],
    ld: usize,
    at: usize,
) {
    let l = output.h * output.w;
    for c in 0..input.c {
        let plane = &mut dx[c * input.h * input.w..(c + 1) * input.h * input.w];
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let row = &col[r * ld + at..r * ld + at + l];
                let cols = valid_cols(output.w, input.w, stride, kx, pad);
                if cols.is_empty() {
                    continue;
                }
                let first = cols.start * stride + kx - pad;
                for oy in 0..output.h {
                    let y = (oy * stride + ky) as isize - pad as isize;
                    if y < 0 || y >= input.h as isize {
                        continue;
                    }
                    let src = &row[oy * output.w + cols.start..oy * output.w + cols.end];
                    let dst = &mut plane[y as usize * input.w..(y as usize + 1) * input.w];
                    if stride == 1 {
                        dst[first..first + src.len()].iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    } else {
                        for (i, v) in src.iter().enumerate() {
                            dst[first + i * stride] += v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct definition, for comparison.
    fn naive_im2col(x: &[f32], input: Shape, k: usize, stride: usize, pad: usize, output: Shape) -> Vec<f32> {
        let l = output.h * output.w;
        let mut col = vec![0.0; input.c * k * k * l];
        for c in 0..input.c {
            for ky in 0..k {
                for kx in 0..k {
                    for oy in 0..output.h {
                        for ox in 0..output.w {
                            let y = (oy * stride + ky) as isize - pad as isize;
                            let xx = (ox * stride + kx) as isize - pad as isize;
                            if y >= 0 && xx >= 0 && (y as usize) < input.h && (xx as usize) < input.w {
                                col[((c * k + ky) * k + kx) * l + oy * output.w + ox] =
                                    x[c * input.h * input.w + y as usize * input.w + xx as usize];
                            }
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        for &(c, h, w, k, stride, pad) in
            &[(2, 6, 7, 3, 1, 1), (1, 8, 8, 5, 1, 0), (3, 7, 6, 3, 2, 1), (2, 5, 5, 2, 2, 1), (1, 4, 4, 1, 1, 0)]
        {
            let input = Shape { c, h, w };
            let layer = Layer::new(LayerKind::Conv2d { out: 1, k, stride, pad }, input, 0, 0).unwrap();
            let output = layer.output;
            let x: Vec<f32> = (0..input.size()).map(|i| (i as f32 * 0.37).sin()).collect();
            let l = output.h * output.w;
            let mut col = vec![7.0; c * k * k * l];
            im2col(&x, input, k, stride, pad, output, &mut col, l, 0);
            assert_eq!(col, naive_im2col(&x, input, k, stride, pad, output), "{c}x{h}x{w} k{k} s{stride} p{pad}");
            // ⟨im2col(x), z⟩ = ⟨x, col2im(z)⟩
            let z: Vec<f32> = (0..col.len()).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut back = vec![0.0; input.size()];
            col2im(&z, input, k, stride, pad, output, &mut back, l, 0);
            let lhs: f64 = col.iter().zip(&z).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
        }
    }
}
