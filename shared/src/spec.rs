//! What one run is: its training and probe configuration and its seed.
//!
//! [`RunSpec`] travels to workers as the wire's typed `RunSpec` message (in
//! `RunAssignment` and `ShardAssignment`), and [`RunFinal`] comes back as its
//! `RunFinal`; the coordinator stores both as JSON, and a `python:` trainer
//! reads the spec as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Training configuration (the `[train]` section of a grid file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model name, e.g. `mlp:64-32-10`.
    pub model: String,
    /// Dataset name, e.g. `digits`.
    pub dataset: String,
    /// Number of passes over the training set.
    pub epochs: u32,
    /// Learning rate η.
    pub lr: f64,
    /// Mini-batch size b.
    pub batch_size: u32,
    /// Heavy-ball momentum (0 for plain SGD).
    pub momentum: f64,
    /// Weight decay λ: the loss gains (λ/2)‖x‖², its gradient λx.
    pub weight_decay: f64,
    /// Draw mini-batches with replacement (the paper's β⁻¹ = η/(2b) assumes it).
    pub replacement: bool,
    /// Fraction of the data held out for testing.
    pub test_fraction: f64,
    /// Seed of the train/test split (shared by all runs of a sweep by default).
    pub split_seed: u64,
    /// Folder of file-based data sets, as seen by the worker (`GRADSWEEP_DATA_DIR` when empty).
    pub data_dir: String,
    /// Keep only these classes, relabelled 0..k in the order given (empty: all).
    pub classes: Vec<u32>,
    /// Average-pool factor for images (4 turns MNIST's 28×28 into the paper's 7×7).
    pub downsample: u32,
    /// Normalise each input channel with the training set's mean and deviation.
    pub normalize: bool,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Learning-rate schedule: `constant`, `step`, `multistep` or `cosine`.
    pub lr_schedule: String,
    /// `step`: multiply the rate by `lr_gamma` every this many epochs.
    pub lr_step_epochs: u32,
    /// `multistep`: multiply the rate by `lr_gamma` at each of these epochs.
    pub lr_milestones: Vec<u32>,
    /// Factor of `step` and `multistep`.
    pub lr_gamma: f64,
    /// A segment ends (and the run is checkpointed) every this many epochs
    /// (0: not at epoch ends). Never changes a run's results.
    #[serde(default = "one")]
    pub checkpoint_every_epochs: u32,
    /// ... and every this many SGD steps (0: not by steps).
    #[serde(default)]
    pub checkpoint_every_steps: u64,
    /// `control:` models: the strength λ of the rotational (non-gradient)
    /// force; 0 is detailed balance (see [`crate::controls::Control`]).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub control_lambda: f64,
    /// `control:` models: Euler–Maruyama steps per epoch, each of length `lr`.
    #[serde(default = "default_control_steps", skip_serializing_if = "is_default_control_steps")]
    pub control_steps: u32,
    /// Who trains the run: gradsweep's own engine (the default, left out of
    /// the JSON) or a Python function (see [`Trainer`]).
    #[serde(default, skip_serializing_if = "Trainer::is_builtin")]
    pub trainer: Trainer,
}

/// Who trains a run: gradsweep's own engine, or a function of the user's
/// that a Python worker imports (`python:MODULE:FUNCTION`, e.g.
/// `python:my_package.train:main`).
///
/// Workers declare the trainers they run when they register (a Rust worker:
/// [`Trainer::Builtin`] only); the coordinator leases a run only to a worker
/// that declared its trainer, so a Rust worker never takes a Python run and
/// a Python worker never takes another trainer's. In a grid file and in
/// JSON it is its name: `"builtin"` or `"python:MODULE:FUNCTION"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Trainer {
    /// gradsweep's engine: the named models, `mlp:`, `linear:` and `control:`.
    #[default]
    Builtin,
    /// A Python function `FUNCTION` of module `MODULE`, called with each run.
    Python {
        /// Dotted module path (`my_package.train`).
        module: String,
        /// Attribute of the module (`main`; dotted for a class's method).
        function: String,
    },
}

impl Trainer {
    /// The name of [`Trainer::Builtin`].
    pub const BUILTIN: &'static str = "builtin";

    /// Whether this is gradsweep's own engine.
    pub fn is_builtin(&self) -> bool {
        matches!(self, Trainer::Builtin)
    }

    /// Reads a trainer's name, saying what is wrong with a malformed one.
    pub fn parse(name: &str) -> Result<Trainer, String> {
        if name == Self::BUILTIN {
            return Ok(Trainer::Builtin);
        }
        let Some(rest) = name.strip_prefix("python:") else {
            return Err(format!(
                "unknown trainer {name:?}: use \"builtin\" (gradsweep's engine) or \"python:MODULE:FUNCTION\" \
                 (e.g. \"python:my_package.train:main\")"
            ));
        };
        let Some((module, function)) = rest.split_once(':') else {
            return Err(format!("trainer {name:?} needs a function after the module: \"python:MODULE:FUNCTION\""));
        };
        let dotted = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|part| {
                    let mut c = part.chars();
                    c.next().is_some_and(|f| f == '_' || f.is_alphabetic())
                        && c.all(|x| x == '_' || x.is_alphanumeric())
                })
        };
        if !dotted(module) {
            return Err(format!("trainer {name:?}: {module:?} is not a Python module path (dotted identifiers)"));
        }
        if !dotted(function) {
            return Err(format!("trainer {name:?}: {function:?} is not a Python attribute (dotted identifiers)"));
        }
        Ok(Trainer::Python { module: module.into(), function: function.into() })
    }

    /// Its name, as a grid file and a worker's registration spell it.
    pub fn name(&self) -> String {
        match self {
            Trainer::Builtin => Self::BUILTIN.into(),
            Trainer::Python { module, function } => format!("python:{module}:{function}"),
        }
    }
}

impl std::fmt::Display for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Trainer> for String {
    fn from(t: Trainer) -> String {
        t.name()
    }
}

impl TryFrom<String> for Trainer {
    type Error = String;
    fn try_from(s: String) -> Result<Trainer, String> {
        Trainer::parse(&s)
    }
}

/// Steps per epoch of a `control:` run unless the grid says otherwise.
pub const DEFAULT_CONTROL_STEPS: u32 = 1000;

fn default_control_steps() -> u32 {
    DEFAULT_CONTROL_STEPS
}

fn is_default_control_steps(v: &u32) -> bool {
    *v == DEFAULT_CONTROL_STEPS
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0 && v.is_sign_positive()
}

impl TrainConfig {
    /// The data options of this configuration; `data_dir` falls back to
    /// `GRADSWEEP_DATA_DIR`, then `data`.
    pub fn data_options(&self) -> crate::data::DataOptions {
        let data_dir = if self.data_dir.is_empty() {
            std::env::var("GRADSWEEP_DATA_DIR").unwrap_or_else(|_| "data".into())
        } else {
            self.data_dir.clone()
        };
        crate::data::DataOptions {
            data_dir,
            classes: self.classes.clone(),
            downsample: self.downsample.max(1),
            normalize: self.normalize,
            test_fraction: self.test_fraction,
            split_seed: self.split_seed,
        }
    }

    /// Learning rate at `step` of `total` steps (`epoch` is the current epoch, from 0).
    pub fn lr_at(&self, epoch: u32, step: u64, total: u64) -> f64 {
        match self.lr_schedule.as_str() {
            "step" => self.lr * self.lr_gamma.powi((epoch / self.lr_step_epochs.max(1)) as i32),
            "multistep" => {
                self.lr * self.lr_gamma.powi(self.lr_milestones.iter().filter(|&&m| epoch >= m).count() as i32)
            }
            "cosine" => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
            _ => self.lr,
        }
    }
}

fn one() -> u32 {
    1
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "mlp:64-32-10".into(),
            dataset: "digits".into(),
            epochs: 10,
            lr: 0.1,
            batch_size: 32,
            momentum: 0.0,
            weight_decay: 0.0,
            replacement: false,
            test_fraction: 0.2,
            split_seed: 0,
            data_dir: String::new(),
            classes: vec![],
            downsample: 1,
            normalize: false,
            nesterov: false,
            lr_schedule: "constant".into(),
            lr_step_epochs: 10,
            lr_milestones: vec![],
            lr_gamma: 0.1,
            checkpoint_every_epochs: 1,
            checkpoint_every_steps: 0,
            control_lambda: 0.0,
            control_steps: DEFAULT_CONTROL_STEPS,
            trainer: Trainer::Builtin,
        }
    }
}

/// Probe configuration (the `[probe]` section): when and how `D(x)` and the
/// trajectory are measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Sketch `D(x)` every this many epochs (and always after the last).
    pub every_epochs: u32,
    /// Sketch `D(x)` after exactly these epochs instead (and after the
    /// last); empty: every `every_epochs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at_epochs: Vec<u32>,
    /// Frequent Directions rows ℓ, or `"auto"`: sized by the probe until the
    /// rank at the paper's threshold is resolved (see [`SketchSize`]).
    #[serde(default)]
    pub sketch_rank: SketchSize,
    /// Memory a probe may use, in MiB (sketch buffer, Gram matrices, the
    /// eigendecomposition and the row-space basis; see
    /// [`crate::sketch::probe_memory_bytes`]). Bounds the ℓ an auto probe
    /// grows to; a fixed ℓ above it is refused when the grid is checked.
    #[serde(default = "default_memory_mb", skip_serializing_if = "is_default_memory_mb")]
    pub memory_mb: u32,
    /// Samples per probe shard (0: one shard of all samples). A probe is
    /// computed shard by shard, by as many threads as the worker has idle
    /// slots, and the shards' sketches are merged in shard order: the
    /// layout decides the result, the threads only the time (see
    /// [`crate::shards`]).
    #[serde(default = "default_shard_samples", skip_serializing_if = "is_default_shard_samples")]
    pub shard_samples: u32,
    /// Keep the first this many per-sample gradient rows of each probe (in
    /// sample order, eval mode: the rows its sketch saw) and the weights
    /// that produced them, exported as `.npy` next to the results. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub save_gradients: u32,
    /// Keep every probe's whole sketch after its cell is merged. By default
    /// (false) the coordinator keeps, once a cell's merge covers all its
    /// seeds, only each probe's digest (eigenvalues, Δ, moments, and
    /// [`Self::digest_vectors`] top eigenvectors): what the results and any
    /// threshold need, at a fraction of the bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_sketches: bool,
    /// Top eigenvectors of `D̂` each probe's digest keeps (`4·d` bytes
    /// each; at most [`crate::results::OVERLAP_K`]). Nothing the results
    /// report reads them once the cell is merged, so the default is 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub digest_vectors: u32,
    /// Number of directions the trajectory is projected onto.
    pub projections: u32,
    /// Which directions: seeded random ones, or the top eigenvectors of `D`.
    #[serde(default)]
    pub basis: ProjectionBasis,
    /// With `basis = "eigen"`: the probe (0-based) whose sketch's top
    /// eigenvectors become the directions, fixed from then on; the
    /// trajectory is recorded after it.
    #[serde(default)]
    pub basis_probe: u32,
    /// Largest lag (in steps) of the trajectory statistics.
    pub max_lag: u32,
    /// Epochs before the trajectory is recorded.
    pub burn_in_epochs: u32,
    /// Seed of the projection directions (shared by all runs, so their
    /// trajectories are comparable and mergeable).
    pub projection_seed: u64,
    /// Per-sample gradients are computed in blocks of this many samples.
    pub block_size: u32,
    /// How probe sketches travel: f32 rows, or f16 rows (half the bytes;
    /// the rounding is measured and added to the certificate).
    #[serde(default)]
    pub wire_precision: WirePrecision,
    /// Welch window (points) of the trajectory's power spectrum: a power of
    /// two in 8..=4096, or 0 for none.
    #[serde(default = "default_psd_window")]
    pub psd_window: u32,
    /// Welch window, in epochs, of the trajectory recorded once per epoch
    /// as well (see [`crate::epochs`]): the projected coordinates, every
    /// weight's increments and the weight norm, at the end of each epoch
    /// after the burn-in; a power of two in 8..=4096, or 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch_psd_window: u32,
    /// Also compute D exactly (dense d×d, symmetric eigendecomposition) at
    /// each probe, next to the sketch; for d up to [`EXACT_MAX_DIM`].
    pub exact: bool,
}

/// How large a probe's Frequent Directions sketch is.
///
/// In a grid file and in JSON: an integer ℓ, or the string `"auto"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SketchSizeRepr", try_from = "SketchSizeRepr")]
pub enum SketchSize {
    /// The probe sizes itself: a first pass at ℓ = [`AUTO_FIRST_ELL`] (or
    /// `projections`, if larger); while the rank at the paper's threshold is
    /// not resolved (bracket width above [`crate::stats::RESOLVE_WIDTH`] of
    /// its lower end), another pass at the ℓ the spectrum says would resolve
    /// it (1.25 to 4 times the last), up to what `memory_mb` allows. A
    /// sketch with `ℓ ≥ d` or `2ℓ ≥ n` is exact, so small problems always
    /// resolve.
    #[default]
    Auto,
    /// Exactly this ℓ, in one pass.
    Fixed(u32),
}

/// First sketch size of an auto probe.
pub const AUTO_FIRST_ELL: u32 = 64;

impl SketchSize {
    /// The fixed ℓ, if any.
    pub fn fixed(self) -> Option<u32> {
        match self {
            SketchSize::Fixed(l) => Some(l),
            SketchSize::Auto => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SketchSizeRepr {
    Fixed(u32),
    Named(String),
}

impl From<SketchSize> for SketchSizeRepr {
    fn from(s: SketchSize) -> Self {
        match s {
            SketchSize::Fixed(l) => SketchSizeRepr::Fixed(l),
            SketchSize::Auto => SketchSizeRepr::Named("auto".into()),
        }
    }
}

impl TryFrom<SketchSizeRepr> for SketchSize {
    type Error = String;
    fn try_from(r: SketchSizeRepr) -> Result<Self, String> {
        match r {
            SketchSizeRepr::Fixed(0) => Err("sketch_rank must be ≥ 1".into()),
            SketchSizeRepr::Fixed(l) => Ok(SketchSize::Fixed(l)),
            SketchSizeRepr::Named(s) if s == "auto" => Ok(SketchSize::Auto),
            SketchSizeRepr::Named(s) => Err(format!("sketch_rank must be an integer or \"auto\", found \"{s}\"")),
        }
    }
}

/// Default of `memory_mb`: 2 GiB, enough for ℓ = 2,048 at small-lenet's d = 13,338.
pub const DEFAULT_MEMORY_MB: u32 = 2048;

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn default_shard_samples() -> u32 {
    crate::shards::DEFAULT_SHARD_SAMPLES
}

fn is_default_shard_samples(v: &u32) -> bool {
    *v == crate::shards::DEFAULT_SHARD_SAMPLES
}

fn default_memory_mb() -> u32 {
    DEFAULT_MEMORY_MB
}

fn is_default_memory_mb(v: &u32) -> bool {
    *v == DEFAULT_MEMORY_MB
}

/// The precision of a probe sketch's rows on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WirePrecision {
    /// 4 bytes a value, as computed.
    #[default]
    F32,
    /// 2 bytes a value: each row as a power of two times f16 values.
    F16,
}

/// The directions a trajectory is projected onto.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectionBasis {
    /// `projections` orthonormal directions drawn from `projection_seed`,
    /// the same for every run of a sweep (so their sums merge).
    #[default]
    Random,
    /// The top `projections` eigenvectors of `D` at probe `basis_probe`
    /// (signs fixed so each vector's largest-magnitude entry is positive).
    /// Each run has its own; the `i`-th coordinate of every run is its
    /// `i`-th eigendirection.
    Eigen,
}

fn default_psd_window() -> u32 {
    64
}

/// Most projection directions a run may record (the trajectory sums cost
/// `projections²` per lag per step).
pub const MAX_PROJECTIONS: u32 = 256;

/// Largest d for which `exact = true` is accepted (a d×d f64 matrix and an
/// O(d³) eigendecomposition per probe).
pub const EXACT_MAX_DIM: usize = 4096;

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            every_epochs: 10,
            at_epochs: vec![],
            sketch_rank: SketchSize::Auto,
            memory_mb: DEFAULT_MEMORY_MB,
            shard_samples: crate::shards::DEFAULT_SHARD_SAMPLES,
            save_gradients: 0,
            keep_sketches: false,
            digest_vectors: 0,
            projections: 8,
            basis: ProjectionBasis::Random,
            basis_probe: 0,
            max_lag: 64,
            burn_in_epochs: 0,
            projection_seed: 0,
            block_size: 64,
            psd_window: default_psd_window(),
            epoch_psd_window: 0,
            wire_precision: WirePrecision::F32,
            exact: false,
        }
    }
}

/// One run: a cell's configuration and one seed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Training configuration.
    pub train: TrainConfig,
    /// Probe configuration.
    pub probe: ProbeConfig,
    /// The run's seed (weights and data order).
    pub seed: u64,
    /// The grid's `[user]` keys, with this cell's values: free-form
    /// settings a `python:` trainer reads (empty, and left out of the JSON,
    /// for the built-in engine).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, serde_json::Value>,
}

impl RunSpec {
    /// Temperature β⁻¹ = η / (2b).
    pub fn temperature(&self) -> f64 {
        self.train.lr / (2.0 * self.train.batch_size as f64)
    }

    /// Whether the model is a `control:` process (no data, no probes).
    pub fn is_control(&self) -> bool {
        self.train.model.starts_with(crate::controls::CONTROL_PREFIX)
    }

    /// Whether the run must have finite test figures: the engine's
    /// networks do; a `control:` run reads no data, and a `python:`
    /// trainer's figures are what it reports (NaN when it reports none).
    pub fn has_test_set(&self) -> bool {
        !self.is_control() && self.train.trainer.is_builtin()
    }

    /// Epochs after which a probe runs, in order (the last epoch included);
    /// none for a `control:` run, which has no per-sample gradients.
    pub fn probe_epochs(&self) -> Vec<u32> {
        if self.is_control() {
            return vec![];
        }
        let every = self.probe.every_epochs.max(1);
        let mut e: Vec<u32> = if self.probe.at_epochs.is_empty() {
            (1..=self.train.epochs).filter(|e| e % every == 0).collect()
        } else {
            let mut at: Vec<u32> =
                self.probe.at_epochs.iter().copied().filter(|&e| (1..=self.train.epochs).contains(&e)).collect();
            at.sort_unstable();
            at.dedup();
            at
        };
        if e.last() != Some(&self.train.epochs) {
            e.push(self.train.epochs);
        }
        e
    }
}

/// How a run ended, as reported by the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinal {
    /// SGD steps taken.
    pub steps: u64,
    /// Parameter dimension d.
    pub params: usize,
    /// Mean training loss over the last epoch's mini-batches.
    #[serde(with = "crate::json_f64")]
    pub train_loss: f64,
    /// Loss on the whole training set at the end (eval mode).
    #[serde(with = "crate::json_f64")]
    pub final_train_loss: f64,
    /// Accuracy on the held-out set.
    #[serde(with = "crate::json_f64")]
    pub test_accuracy: f64,
    /// Loss on the held-out set.
    #[serde(with = "crate::json_f64")]
    pub test_loss: f64,
    /// True when the loss became NaN or infinite.
    pub diverged: bool,
    /// FNV-1a hash of the final weights' bits (bit-identity checks).
    pub weights_hash: u64,
}

/// FNV-1a over the bit patterns of `xs`.
pub fn hash_f32(xs: &[f32]) -> u64 {
    fnv1a(xs.iter().flat_map(|x| x.to_bits().to_le_bytes()))
}

/// FNV-1a over the bit patterns of `xs` (a control's exact f64 state).
pub fn hash_f64(xs: &[f64]) -> u64 {
    fnv1a(xs.iter().flat_map(|x| x.to_bits().to_le_bytes()))
}

/// 64-bit FNV-1a of a byte sequence: the hash of final weights in results,
/// and a worker's heartbeat phase from its id.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}
