//! Networks by name, with batch and exact per-sample gradients.
//!
//! | name | architecture | params |
//! |---|---|---|
//! | `small-lenet` | conv5×5(8)+BN+ReLU+maxpool3/3+dropout → conv5×5(16)+BN+ReLU+maxpool2+dropout → FC 64→128+BN+ReLU+dropout → FC 128→10 (dropout 0.1; input 1×28×28) | 13,338 |
//! | `small-fc` | 7×7 input: Linear 49→64 + BN + ReLU + Linear 64→10 | 3,978 |
//! | `tiny-fc` | 7×7 input, 5 classes: Linear 49→16 + BN + ReLU + Linear 16→5 | 917 |
//! | `small-allcnn[:C]` | 3×32×32: conv3×3(12)×3 (third stride 2), conv3×3(24)×3 (third stride 2), conv3×3(24)×2, conv1×1→C, each conv + BN + ReLU (padding 1), global average pooling | 26,982 (C = 10) |
//! | `linear:IN-OUT` | one Linear layer | IN·OUT + OUT |
//! | `mlp:W0-…-Wk[+bn]` | Linear layers with ReLU between (and BatchNorm before each ReLU with `+bn`) | |
//!
//! Conv layers have biases. All parameters live in one flat f32 vector,
//! layer by layer (weights then bias; BatchNorm γ then β); BatchNorm's
//! running statistics live in a separate buffer vector. Per-sample
//! gradients are computed in evaluation mode (see [`crate::nn`]).

use crate::nn::{Cache, Layer, LayerKind, Mode, PerSampleOut, Shape};
use crate::rng::{Rng, Stream};

/// Errors in a model name.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The name does not describe a known model.
    #[error(
        "unknown model `{0}` (known: small-lenet, small-fc, tiny-fc, small-allcnn[:CLASSES], linear:IN-OUT, mlp:W0-W1-...-Wk[+bn])"
    )]
    Unknown(String),
    /// The layers do not fit together.
    #[error("model `{0}`: {1}")]
    Shape(String, String),
}

/// The named models, for listings.
pub const NAMED_MODELS: &[&str] = &["small-lenet", "small-fc", "tiny-fc", "small-allcnn"];

/// A feed-forward network ending in softmax cross-entropy.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    name: String,
    input: Shape,
    layers: Vec<Layer>,
    params: usize,
    buffers: usize,
}

/// Loss and accuracy over a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
}

/// Samples evaluated per forward pass in [`Model::evaluate`].
const EVAL_CHUNK: usize = 500;

fn conv(out: usize, k: usize, stride: usize, pad: usize) -> LayerKind {
    LayerKind::Conv2d { out, k, stride, pad }
}

impl Model {
    /// Builds a model by name.
    pub fn parse(name: &str) -> Result<Self, ModelError> {
        use LayerKind::*;
        let unknown = || ModelError::Unknown(name.to_string());
        let (input, kinds): (Shape, Vec<LayerKind>) = match name {
            "small-lenet" => (
                Shape { c: 1, h: 28, w: 28 },
                vec![
                    conv(8, 5, 1, 0),
                    BatchNorm,
                    Relu,
                    MaxPool2d { k: 3, stride: 3 },
                    Dropout { p: 0.1 },
                    conv(16, 5, 1, 0),
                    BatchNorm,
                    Relu,
                    MaxPool2d { k: 2, stride: 2 },
                    Dropout { p: 0.1 },
                    Flatten,
                    Linear { out: 128 },
                    BatchNorm,
                    Relu,
                    Dropout { p: 0.1 },
                    Linear { out: 10 },
                ],
            ),
            "small-fc" => {
                (Shape { c: 1, h: 7, w: 7 }, vec![Flatten, Linear { out: 64 }, BatchNorm, Relu, Linear { out: 10 }])
            }
            "tiny-fc" => {
                (Shape { c: 1, h: 7, w: 7 }, vec![Flatten, Linear { out: 16 }, BatchNorm, Relu, Linear { out: 5 }])
            }
            _ if name == "small-allcnn" || name.starts_with("small-allcnn:") => {
                let classes = match name.strip_prefix("small-allcnn:") {
                    None => 10,
                    Some(c) => c.parse::<usize>().ok().filter(|&c| c >= 2).ok_or_else(unknown)?,
                };
                let mut k = vec![];
                for (out, ks, stride, pad) in [
                    (12, 3, 1, 1),
                    (12, 3, 1, 1),
                    (12, 3, 2, 1),
                    (24, 3, 1, 1),
                    (24, 3, 1, 1),
                    (24, 3, 2, 1),
                    (24, 3, 1, 1),
                    (24, 3, 1, 1),
                    (classes, 1, 1, 0),
                ] {
                    k.extend([conv(out, ks, stride, pad), BatchNorm, Relu]);
                }
                k.push(GlobalAvgPool);
                (Shape { c: 3, h: 32, w: 32 }, k)
            }
            _ => {
                let (kind, rest) = name.split_once(':').ok_or_else(unknown)?;
                let (rest, bn) = match rest.strip_suffix("+bn") {
                    Some(r) => (r, true),
                    None => (rest, false),
                };
                let widths: Vec<usize> = rest
                    .split('-')
                    .map(|w| w.parse::<usize>().ok().filter(|&w| w > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(unknown)?;
                let ok = match kind {
                    "linear" => widths.len() == 2 && !bn,
                    "mlp" => widths.len() >= 2,
                    _ => false,
                };
                if !ok || widths[widths.len() - 1] < 2 {
                    return Err(unknown());
                }
                let mut k = vec![];
                for (i, &w) in widths[1..].iter().enumerate() {
                    k.push(Linear { out: w });
                    if i + 2 < widths.len() {
                        if bn {
                            k.push(BatchNorm);
                        }
                        k.push(Relu);
                    }
                }
                (Shape::flat(widths[0]), k)
            }
        };
        Self::build(name, input, kinds)
    }

    /// Places `kinds` in order after an input of shape `input`.
    pub fn build(name: &str, input: Shape, kinds: Vec<LayerKind>) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(kinds.len());
        let (mut shape, mut p, mut bufs) = (input, 0, 0);
        for k in kinds {
            let l = Layer::new(k, shape, p, bufs).map_err(|e| ModelError::Shape(name.to_string(), e))?;
            shape = l.output;
            p += l.params;
            bufs += l.buffers;
            layers.push(l);
        }
        Ok(Model { name: name.to_string(), input, layers, params: p, buffers: bufs })
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of parameters `d`.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Number of non-trainable buffer values (BatchNorm running statistics).
    pub fn buffer_count(&self) -> usize {
        self.buffers
    }

    /// Input shape.
    pub fn input_shape(&self) -> Shape {
        self.input
    }

    /// Input features expected.
    pub fn input_dim(&self) -> usize {
        self.input.size()
    }

    /// Number of output classes.
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.output.size())
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Initial parameters (He-normal weights from the run's `Init` stream).
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed, Stream::Init);
        let mut p = vec![0.0f32; self.params];
        let mut b = self.init_buffers();
        for l in &self.layers {
            l.init(&mut p[l.offset..l.offset + l.params], &mut b[l.buf_offset..l.buf_offset + l.buffers], &mut rng);
        }
        p
    }

    /// Initial buffers: running means 0, running variances 1.
    pub fn init_buffers(&self) -> Vec<f32> {
        let mut b = vec![0.0f32; self.buffers];
        for l in self.layers.iter().filter(|l| l.kind == LayerKind::BatchNorm) {
            let c = l.input.c;
            b[l.buf_offset + c..l.buf_offset + 2 * c].iter_mut().for_each(|v| *v = 1.0);
        }
        b
    }

    fn forward(
        &self,
        p: &[f32],
        buf: &mut [f32],
        x: &[f32],
        b: usize,
        mode: Mode,
        rng: &mut Rng,
    ) -> (Vec<f32>, Vec<Cache>) {
        let mut caches = Vec::with_capacity(self.layers.len());
        let mut a = x.to_vec();
        for l in &self.layers {
            let (y, c) = l.forward(
                &p[l.offset..l.offset + l.params],
                &mut buf[l.buf_offset..l.buf_offset + l.buffers],
                a,
                b,
                mode,
                rng,
            );
            caches.push(c);
            a = y;
        }
        (a, caches)
    }

    /// Turns logits into `scale · (softmax − onehot)` in place; returns
    /// (summed loss, number correct).
    fn softmax_xent(&self, logits: &mut [f32], y: &[u32], scale: f32) -> (f64, usize) {
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
            loss += sum.ln() - (row[label as usize] as f64).ln();
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|v| *v *= inv * scale);
            row[label as usize] -= scale;
        }
        (loss, correct)
    }

    fn backward(
        &self,
        p: &[f32],
        caches: &[Cache],
        mut delta: Vec<f32>,
        b: usize,
        mut grad: Option<&mut [f32]>,
        mut ps: Option<PerSampleOut<'_>>,
    ) {
        for (i, l) in self.layers.iter().enumerate().rev() {
            let g = grad.as_deref_mut().map(|g| &mut g[l.offset..l.offset + l.params]);
            let need_dx = self.layers[..i].iter().any(|l| l.params > 0);
            if !need_dx && l.params == 0 {
                break;
            }
            delta = l.backward(&p[l.offset..l.offset + l.params], &caches[i], &delta, b, need_dx, g, ps.as_mut());
            if !need_dx {
                break;
            }
        }
    }

    /// Mean loss and accuracy over the samples (eval mode, in chunks).
    pub fn evaluate(&self, p: &[f32], buf: &[f32], x: &[f32], y: &[u32]) -> Eval {
        if y.is_empty() {
            return Eval { loss: f64::NAN, accuracy: f64::NAN };
        }
        let dim = self.input_dim();
        let mut scratch = buf.to_vec();
        let mut rng = Rng::new(0, Stream::Other(0));
        let (mut loss, mut correct) = (0.0, 0);
        for (xc, yc) in x.chunks(EVAL_CHUNK * dim).zip(y.chunks(EVAL_CHUNK)) {
            let (mut logits, _) = self.forward(p, &mut scratch, xc, yc.len(), Mode::Eval, &mut rng);
            let (l, c) = self.softmax_xent(&mut logits, yc, 1.0);
            loss += l;
            correct += c;
        }
        Eval { loss: loss / y.len() as f64, accuracy: correct as f64 / y.len() as f64 }
    }

    /// Train-mode gradient of the batch's mean loss into `grad`
    /// (overwritten). BatchNorm uses batch statistics and updates the running
    /// statistics in `buf`; dropout masks come from `rng`. Returns the mean loss.
    pub fn batch_gradient(
        &self,
        p: &[f32],
        buf: &mut [f32],
        x: &[f32],
        y: &[u32],
        grad: &mut [f32],
        rng: &mut Rng,
    ) -> f64 {
        let b = y.len();
        let (mut logits, caches) = self.forward(p, buf, x, b, Mode::Train, rng);
        let (loss, _) = self.softmax_xent(&mut logits, y, 1.0 / b as f32);
        grad.iter_mut().for_each(|g| *g = 0.0);
        self.backward(p, &caches, logits, b, Some(grad), None);
        loss / b as f64
    }

    /// Per-sample gradients in eval mode: row `s` of `out` (`b × d`,
    /// overwritten) is ∇f_s. Returns the summed loss.
    pub fn per_sample_gradients(&self, p: &[f32], buf: &[f32], x: &[f32], y: &[u32], out: &mut [f32]) -> f64 {
        let b = y.len();
        let d = self.params;
        assert_eq!(out.len(), b * d, "per_sample_gradients: out must be b×d");
        let mut scratch = buf.to_vec();
        let mut rng = Rng::new(0, Stream::Other(0));
        let (mut logits, caches) = self.forward(p, &mut scratch, x, b, Mode::Eval, &mut rng);
        let (loss, _) = self.softmax_xent(&mut logits, y, 1.0);
        self.backward(p, &caches, logits, b, None, Some(PerSampleOut { out, d }));
        loss
    }

    /// Eval-mode gradient of the mean loss (for checks): the mean of the
    /// per-sample gradients.
    pub fn eval_gradient(&self, p: &[f32], buf: &[f32], x: &[f32], y: &[u32], grad: &mut [f32]) -> f64 {
        let b = y.len();
        let mut scratch = buf.to_vec();
        let mut rng = Rng::new(0, Stream::Other(0));
        let (mut logits, caches) = self.forward(p, &mut scratch, x, b, Mode::Eval, &mut rng);
        let (loss, _) = self.softmax_xent(&mut logits, y, 1.0 / b as f32);
        grad.iter_mut().for_each(|g| *g = 0.0);
        self.backward(p, &caches, logits, b, Some(grad), None);
        loss / b as f64
    }

    /// One line: parameter count and layer shapes.
    pub fn describe(&self) -> String {
        let layers: Vec<String> = self.layers.iter().map(Layer::describe).collect();
        format!("{} params; input {}; {}", self.params, self.input, layers.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_models_have_exact_parameter_counts() {
        for (name, want) in [("small-lenet", 13_338), ("small-fc", 3_978), ("tiny-fc", 917), ("small-allcnn", 26_982)] {
            let m = Model::parse(name).unwrap();
            assert_eq!(m.param_count(), want, "{name}: {}", m.describe());
        }
        assert_eq!(Model::parse("small-lenet").unwrap().classes(), 10);
        assert_eq!(Model::parse("tiny-fc").unwrap().classes(), 5);
        assert_eq!(Model::parse("small-allcnn:100").unwrap().classes(), 100);
    }

    #[test]
    fn generic_models() {
        assert_eq!(Model::parse("mlp:64-32-10").unwrap().param_count(), 64 * 32 + 32 + 32 * 10 + 10);
        assert_eq!(Model::parse("mlp:64-32-10+bn").unwrap().param_count(), 64 * 32 + 32 + 64 + 32 * 10 + 10);
        assert_eq!(Model::parse("linear:49-10").unwrap().param_count(), 500);
        for bad in ["mlp:64", "linear:4-5-6", "conv:1", "linear:4-5+bn", "small-allcnn:1", "mlp:3-0-2"] {
            assert!(Model::parse(bad).is_err(), "{bad}");
        }
    }

    fn data(m: &Model, b: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(seed, Stream::Other(2));
        let x = (0..b * m.input_dim()).map(|_| r.normal() as f32).collect();
        let y = (0..b).map(|_| r.below(m.classes() as u64) as u32).collect();
        (x, y)
    }

    /// Small nets that exercise every layer kind.
    fn check_models() -> Vec<Model> {
        use LayerKind::*;
        let img = Shape { c: 2, h: 6, w: 6 };
        vec![
            Model::parse("mlp:5-7-4-3").unwrap(),
            Model::parse("mlp:5-6-3+bn").unwrap(),
            Model::build("tanh", Shape::flat(4), vec![Linear { out: 5 }, Tanh, Linear { out: 3 }]).unwrap(),
            Model::build(
                "conv",
                img,
                vec![
                    conv(3, 3, 1, 1),
                    BatchNorm,
                    Tanh,
                    MaxPool2d { k: 2, stride: 2 },
                    Dropout { p: 0.3 },
                    conv(4, 2, 2, 1),
                    Relu,
                    Flatten,
                    Linear { out: 3 },
                ],
            )
            .unwrap(),
            Model::build("allconv", img, vec![conv(3, 3, 2, 1), BatchNorm, Relu, conv(3, 1, 1, 0), GlobalAvgPool])
                .unwrap(),
        ]
    }

    /// Central differences in f32 (h = 1e-3: truncation O(h²) and rounding
    /// O(ε|f|/h) ≈ 1e-4 for O(1) losses). Coordinates whose one-sided slopes
    /// disagree sit on a ReLU or max-pool kink and are skipped; they must be rare.
    fn fd_check(name: &str, f: &dyn Fn(&[f32]) -> f64, p: &[f32], analytic: &[f32]) {
        fd_check_with(name, f, p, analytic, 1e-3, 3e-3);
    }

    fn fd_check_with(name: &str, f: &dyn Fn(&[f32]) -> f64, p: &[f32], analytic: &[f32], h: f32, tol: f64) {
        let f0 = f(p);
        let (mut checked, mut kinks) = (0, 0);
        for j in 0..p.len() {
            let mut q = p.to_vec();
            q[j] += h;
            let fp = f(&q);
            q[j] -= 2.0 * h;
            let fm = f(&q);
            let (right, left) = ((fp - f0) / h as f64, (f0 - fm) / h as f64);
            if (right - left).abs() > 0.05 * (right.abs() + left.abs()) + 1e-2 {
                kinks += 1;
                continue;
            }
            let fd = (fp - fm) / (2.0 * h as f64);
            let an = analytic[j] as f64;
            assert!((fd - an).abs() < tol * (1.0 + an.abs()), "{name} param {j}: fd {fd} vs analytic {an}");
            checked += 1;
        }
        assert!(kinks * 20 <= checked, "{name}: {kinks} kinks of {checked}");
    }

    #[test]
    fn eval_mode_gradients_match_finite_differences_and_per_sample_sums() {
        for m in check_models() {
            let p = m.init(3);
            let mut buf = m.init_buffers();
            // Non-trivial running statistics.
            buf.iter_mut().enumerate().for_each(|(i, v)| *v += 0.1 * (i % 3) as f32);
            let b = 5;
            let (x, y) = data(&m, b, 7);
            let d = m.param_count();
            let mut g = vec![0.0; d];
            m.eval_gradient(&p, &buf, &x, &y, &mut g);
            fd_check(m.name(), &|q| m.evaluate(q, &buf, &x, &y).loss, &p, &g);
            let mut per = vec![0.0; b * d];
            let sum_loss = m.per_sample_gradients(&p, &buf, &x, &y, &mut per);
            assert!((sum_loss / b as f64 - m.evaluate(&p, &buf, &x, &y).loss).abs() < 1e-6);
            for j in 0..d {
                let s: f32 = (0..b).map(|i| per[i * d + j]).sum::<f32>() / b as f32;
                assert!((s - g[j]).abs() < 1e-5 * (1.0 + g[j].abs()), "{} param {j}: {s} vs {}", m.name(), g[j]);
            }
            // Each row is that sample's own gradient.
            let mut g1 = vec![0.0; d];
            m.eval_gradient(&p, &buf, &x[..m.input_dim()], &y[..1], &mut g1);
            for j in 0..d {
                assert!((per[j] - g1[j]).abs() < 1e-5 * (1.0 + g1[j].abs()));
            }
        }
    }

    #[test]
    fn train_mode_gradients_match_finite_differences() {
        for m in check_models() {
            let p = m.init(4);
            let buf = m.init_buffers();
            let b = 6;
            let (x, y) = data(&m, b, 8);
            let mut g = vec![0.0; m.param_count()];
            let mut scratch = buf.clone();
            m.batch_gradient(&p, &mut scratch, &x, &y, &mut g, &mut Rng::new(1, Stream::Dropout(0)));
            let loss = |q: &[f32]| {
                let mut s = buf.clone();
                let mut gg = vec![0.0; m.param_count()];
                m.batch_gradient(q, &mut s, &x, &y, &mut gg, &mut Rng::new(1, Stream::Dropout(0)))
            };
            fd_check(m.name(), &loss, &p, &g);
        }
    }

    #[test]
    fn batchnorm_updates_running_statistics_in_train_mode_only() {
        let m = Model::parse("mlp:3-4-2+bn").unwrap();
        let p = m.init(0);
        let mut buf = m.init_buffers();
        let (x, y) = data(&m, 8, 1);
        let before = buf.clone();
        m.evaluate(&p, &buf, &x, &y);
        assert_eq!(buf, before);
        let mut g = vec![0.0; m.param_count()];
        m.batch_gradient(&p, &mut buf, &x, &y, &mut g, &mut Rng::new(0, Stream::Dropout(0)));
        assert_ne!(buf, before);
    }

    /// Finite differences on each named model, in both modes, on a random
    /// subset of coordinates (all of them would take minutes for small-allcnn).
    /// A first-layer conv weight feeds thousands of pre-activations, so a step
    /// of 1e-3 crosses ReLU and max-pool switch points too small for the
    /// one-sided-slope test to flag; h = 2e-4 makes that rare, at an f32
    /// rounding error of ε·|f|/h ≈ 1.4e-3, hence the tolerance 6e-3.
    #[test]
    fn named_models_match_finite_differences_in_both_modes() {
        for name in NAMED_MODELS {
            let m = Model::parse(name).unwrap();
            let p = m.init(5);
            let buf = m.init_buffers();
            let (x, y) = data(&m, 4, 11);
            let d = m.param_count();
            let mut pick = Rng::new(2, Stream::Other(3));
            let coords: Vec<usize> = (0..40).map(|_| pick.below(d as u64) as usize).collect();
            let sub = |g: &[f32]| coords.iter().map(|&j| g[j]).collect::<Vec<f32>>();
            let p_sub = sub(&p);
            let with = |q: &[f32]| {
                let mut full = p.clone();
                coords.iter().zip(q).for_each(|(&j, &v)| full[j] = v);
                full
            };
            let mut g = vec![0.0; d];
            m.eval_gradient(&p, &buf, &x, &y, &mut g);
            fd_check_with(
                &format!("{name} eval"),
                &|q| m.evaluate(&with(q), &buf, &x, &y).loss,
                &p_sub,
                &sub(&g),
                2e-4,
                6e-3,
            );
            let mut scratch = buf.clone();
            m.batch_gradient(&p, &mut scratch, &x, &y, &mut g, &mut Rng::new(1, Stream::Dropout(0)));
            let train_loss = |q: &[f32]| {
                let mut s = buf.clone();
                let mut gg = vec![0.0; d];
                m.batch_gradient(&with(q), &mut s, &x, &y, &mut gg, &mut Rng::new(1, Stream::Dropout(0)))
            };
            fd_check_with(&format!("{name} train"), &train_loss, &p_sub, &sub(&g), 2e-4, 6e-3);
        }
    }

    #[test]
    fn named_models_forward_and_per_sample_rows() {
        for name in NAMED_MODELS {
            let m = Model::parse(name).unwrap();
            let p = m.init(1);
            let buf = m.init_buffers();
            let (x, y) = data(&m, 2, 3);
            let mut per = vec![0.0; 2 * m.param_count()];
            let l = m.per_sample_gradients(&p, &buf, &x, &y, &mut per);
            assert!(l.is_finite() && per.iter().all(|v| v.is_finite()), "{name}");
            let mut g = vec![0.0; m.param_count()];
            m.eval_gradient(&p, &buf, &x, &y, &mut g);
            for j in 0..m.param_count() {
                let s = (per[j] + per[m.param_count() + j]) / 2.0;
                assert!((s - g[j]).abs() < 1e-4 * (1.0 + g[j].abs()), "{name} param {j}");
            }
        }
    }
}
