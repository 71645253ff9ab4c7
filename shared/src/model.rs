//! Models with exact per-sample gradients.
//!
//! This module holds the dense networks of the first release: `linear:IN-OUT`
//! and `mlp:W0-W1-…-Wk` (Linear layers with ReLU between them, softmax
//! cross-entropy on top). All parameters live in one flat f32 vector, layer
//! by layer, each layer as its weight matrix (`out × in`, row-major) followed
//! by its bias.
//!
//! Per-sample gradients are exact: for a dense layer the gradient of sample
//! `i`'s loss with respect to the weights is the outer product `δᵢ aᵢᵀ` of
//! the back-propagated error and the layer input, and `δᵢ` for the bias.
//! They are what `D(x)` is defined from, and are computed in evaluation mode
//! (these networks have no train/eval difference).

use crate::linalg::{sgemm_nt, sgemm_tn};
use crate::rng::{Rng, Stream};

/// Errors in a model name.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name does not describe a known model.
    #[error("unknown model `{0}` (known: linear:IN-OUT, mlp:W0-W1-...-Wk)")]
    Unknown(String),
}

/// A dense feed-forward network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// Layer widths, input first, classes last.
    widths: Vec<usize>,
    /// Offset of each layer's weights in the flat parameter vector.
    offsets: Vec<usize>,
    params: usize,
}

/// Loss and accuracy over a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
}

impl Model {
    /// Parses `linear:IN-OUT` or `mlp:W0-W1-…-Wk`.
    pub fn parse(name: &str) -> Result<Self, ModelError> {
        let unknown = || ModelError::Unknown(name.to_string());
        let (kind, rest) = name.split_once(':').ok_or_else(unknown)?;
        let widths: Vec<usize> = rest
            .split('-')
            .map(|w| w.parse::<usize>().ok().filter(|&w| w > 0))
            .collect::<Option<_>>()
            .ok_or_else(unknown)?;
        let ok = match kind {
            "linear" => widths.len() == 2,
            "mlp" => widths.len() >= 2,
            _ => false,
        };
        if !ok || *widths.last().unwrap_or(&0) < 2 {
            return Err(unknown());
        }
        Ok(Self::from_widths(widths))
    }

    /// A network with the given layer widths (input first).
    pub fn from_widths(widths: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(widths.len() - 1);
        let mut p = 0;
        for w in widths.windows(2) {
            offsets.push(p);
            p += w[0] * w[1] + w[1];
        }
        Model { widths, offsets, params: p }
    }

    /// Number of parameters `d`.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Input features expected.
    pub fn input_dim(&self) -> usize {
        self.widths[0]
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        *self.widths.last().unwrap_or(&0)
    }

    fn layers(&self) -> usize {
        self.widths.len() - 1
    }

    /// Initial parameters: He-normal weights (std √(2/in)), zero biases.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed, Stream::Init);
        let mut p = vec![0.0f32; self.params];
        for l in 0..self.layers() {
            let (i, o) = (self.widths[l], self.widths[l + 1]);
            let std = (2.0 / i as f64).sqrt();
            for w in &mut p[self.offsets[l]..self.offsets[l] + i * o] {
                *w = (rng.normal() * std) as f32;
            }
        }
        p
    }

    /// Forward pass over `b` samples; returns the activations of every layer
    /// (input excluded; the last is the logits).
    fn forward(&self, params: &[f32], x: &[f32], b: usize) -> Vec<Vec<f32>> {
        let mut acts: Vec<Vec<f32>> = Vec::with_capacity(self.layers());
        for l in 0..self.layers() {
            let (i, o) = (self.widths[l], self.widths[l + 1]);
            let w = &params[self.offsets[l]..self.offsets[l] + i * o];
            let bias = &params[self.offsets[l] + i * o..self.offsets[l] + i * o + o];
            let mut z = vec![0.0f32; b * o];
            for row in z.chunks_exact_mut(o) {
                row.copy_from_slice(bias);
            }
            let input: &[f32] = if l == 0 { x } else { &acts[l - 1] };
            sgemm_nt(b, i, o, 1.0, input, w, 1.0, &mut z);
            if l + 1 < self.layers() {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            acts.push(z);
        }
        acts
    }

    /// Turns logits into per-sample errors `softmax − onehot` in place and
    /// returns (sum of losses, number correct).
    fn softmax_xent(&self, logits: &mut [f32], y: &[u32]) -> (f64, usize) {
        let c = self.classes();
        let mut loss = 0.0;
        let mut correct = 0;
        for (row, &label) in logits.chunks_exact_mut(c).zip(y) {
            let (mut arg, mut max) = (0, f32::NEG_INFINITY);
            for (k, &v) in row.iter().enumerate() {
                if v > max {
                    max = v;
                    arg = k;
                }
            }
            if arg == label as usize {
                correct += 1;
            }
            let mut sum = 0.0f64;
            for v in row.iter_mut() {
                let e = ((*v - max) as f64).exp();
                sum += e;
                *v = e as f32;
            }
            let zy = row[label as usize] as f64;
            loss += sum.ln() - zy.ln();
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
            row[label as usize] -= 1.0;
        }
        (loss, correct)
    }

    /// Mean loss and accuracy over `b` samples.
    pub fn evaluate(&self, params: &[f32], x: &[f32], y: &[u32]) -> Eval {
        let b = y.len();
        if b == 0 {
            return Eval { loss: f64::NAN, accuracy: f64::NAN };
        }
        let mut acts = self.forward(params, x, b);
        let mut logits = acts.pop().unwrap_or_default();
        let (loss, correct) = self.softmax_xent(&mut logits, y);
        Eval { loss: loss / b as f64, accuracy: correct as f64 / b as f64 }
    }

    /// Back-propagates; calls `sink(layer, input activations, errors δ)` for
    /// each layer from the top down. Returns the summed loss.
    fn backward(&self, params: &[f32], x: &[f32], y: &[u32], mut sink: impl FnMut(usize, &[f32], &[f32])) -> f64 {
        let b = y.len();
        let mut acts = self.forward(params, x, b);
        let mut delta = acts.pop().unwrap_or_default();
        let (loss, _) = self.softmax_xent(&mut delta, y);
        for l in (0..self.layers()).rev() {
            let (i, o) = (self.widths[l], self.widths[l + 1]);
            let input: &[f32] = if l == 0 { x } else { &acts[l - 1] };
            sink(l, input, &delta);
            if l > 0 {
                let w = &params[self.offsets[l]..self.offsets[l] + i * o];
                let mut prev = vec![0.0f32; b * i];
                crate::linalg::sgemm(b, o, i, 1.0, &delta, w, 0.0, &mut prev);
                for (p, &a) in prev.iter_mut().zip(input) {
                    if a <= 0.0 {
                        *p = 0.0;
                    }
                }
                delta = prev;
            }
        }
        loss
    }

    /// Mean-loss gradient over the batch into `grad` (overwritten); returns
    /// the mean loss.
    pub fn batch_gradient(&self, params: &[f32], x: &[f32], y: &[u32], grad: &mut [f32]) -> f64 {
        let b = y.len();
        let scale = 1.0 / b as f32;
        let loss = self.backward(params, x, y, |l, input, delta| {
            let (i, o) = (self.widths[l], self.widths[l + 1]);
            let off = self.offsets[l];
            sgemm_tn(o, b, i, scale, delta, input, 0.0, &mut grad[off..off + o * i]);
            let gb = &mut grad[off + o * i..off + o * i + o];
            gb.iter_mut().for_each(|v| *v = 0.0);
            for row in delta.chunks_exact(o) {
                gb.iter_mut().zip(row).for_each(|(g, d)| *g += d * scale);
            }
        });
        loss / b as f64
    }

    /// Per-sample gradients of each sample's loss: row `s` of `out`
    /// (`b × d`, overwritten) is ∇f_s. Returns the summed loss.
    pub fn per_sample_gradients(&self, params: &[f32], x: &[f32], y: &[u32], out: &mut [f32]) -> f64 {
        let b = y.len();
        let d = self.params;
        assert_eq!(out.len(), b * d, "per_sample_gradients: out must be b×d");
        self.backward(params, x, y, |l, input, delta| {
            let (i, o) = (self.widths[l], self.widths[l + 1]);
            let off = self.offsets[l];
            for s in 0..b {
                let row = &mut out[s * d + off..s * d + off + o * i + o];
                let a = &input[s * i..(s + 1) * i];
                let ds = &delta[s * o..(s + 1) * o];
                let (w, bias) = row.split_at_mut(o * i);
                for (r, &dv) in w.chunks_exact_mut(i).zip(ds) {
                    r.iter_mut().zip(a).for_each(|(g, &av)| *g = dv * av);
                }
                bias.copy_from_slice(ds);
            }
        })
    }

    /// A one-line description: name, parameter count and layer shapes.
    pub fn describe(&self) -> String {
        let layers: Vec<String> =
            self.widths.windows(2).map(|w| format!("linear {}x{}+{}", w[1], w[0], w[1])).collect();
        format!("{} params; {}", self.params, layers.join(", relu, "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> (Model, Vec<f32>, Vec<f32>, Vec<u32>) {
        let m = Model::parse("mlp:5-7-4-3").unwrap();
        let p = m.init(3);
        let mut r = Rng::new(9, Stream::Other(2));
        let b = 6;
        let x: Vec<f32> = (0..b * 5).map(|_| r.normal() as f32).collect();
        let y: Vec<u32> = (0..b).map(|_| r.below(3) as u32).collect();
        (m, p, x, y)
    }

    #[test]
    fn parameter_counts() {
        assert_eq!(Model::parse("mlp:64-32-10").unwrap().param_count(), 64 * 32 + 32 + 32 * 10 + 10);
        assert_eq!(Model::parse("linear:49-10").unwrap().param_count(), 500);
        assert!(Model::parse("mlp:64").is_err());
        assert!(Model::parse("linear:4-5-6").is_err());
        assert!(Model::parse("conv:1").is_err());
    }

    #[test]
    fn per_sample_gradients_sum_to_batch_gradient() {
        let (m, p, x, y) = problem();
        let b = y.len();
        let d = m.param_count();
        let mut per = vec![0.0; b * d];
        let sum_loss = m.per_sample_gradients(&p, &x, &y, &mut per);
        let mut g = vec![0.0; d];
        let mean_loss = m.batch_gradient(&p, &x, &y, &mut g);
        assert!((sum_loss / b as f64 - mean_loss).abs() < 1e-9);
        for j in 0..d {
            let s: f32 = (0..b).map(|i| per[i * d + j]).sum::<f32>() / b as f32;
            assert!((s - g[j]).abs() < 1e-5, "param {j}: {s} vs {}", g[j]);
        }
    }

    #[test]
    fn per_sample_gradients_match_finite_differences() {
        // Central differences in f32 with step h = 1e-3: truncation O(h²),
        // rounding O(ε·|f|/h) ≈ 1e-4 for losses O(1). Coordinates where a
        // ReLU kink lies within ±h (the one-sided slopes disagree) are not
        // differentiable there and are skipped; they must be rare.
        let (m, p, x, y) = problem();
        let d = m.param_count();
        let b = y.len();
        let mut per = vec![0.0; b * d];
        m.per_sample_gradients(&p, &x, &y, &mut per);
        let h = 1e-3f32;
        let (mut checked, mut kinks) = (0, 0);
        for s in 0..b {
            let xs = &x[s * 5..(s + 1) * 5];
            let ys = &y[s..s + 1];
            let f0 = m.evaluate(&p, xs, ys).loss;
            for j in 0..d {
                let mut pp = p.clone();
                pp[j] += h;
                let fp = m.evaluate(&pp, xs, ys).loss;
                pp[j] -= 2.0 * h;
                let fm = m.evaluate(&pp, xs, ys).loss;
                let (right, left) = ((fp - f0) / h as f64, (f0 - fm) / h as f64);
                if (right - left).abs() > 0.05 * (right.abs() + left.abs()) + 1e-2 {
                    kinks += 1;
                    continue;
                }
                let fd = (fp - fm) / (2.0 * h as f64);
                let an = per[s * d + j] as f64;
                assert!((fd - an).abs() < 2e-3 * (1.0 + an.abs()), "sample {s} param {j}: fd {fd} vs {an}");
                checked += 1;
            }
        }
        assert!(kinks * 20 < checked, "{kinks} kinks of {checked}");
    }
}
