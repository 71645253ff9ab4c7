//! The grid file: parsing, validation and expansion into runs.
//!
//! A grid file (TOML) has up to five sections:
//!
//! ```toml
//! [sweep]                  # name, seeds (a list, or a count n meaning 0..n)
//! name = "quickstart"
//! seeds = [0, 1]
//! [train]                  # defaults for every train key
//! model = "mlp:64-32-10"
//! [probe]                  # defaults for every probe key
//! every_epochs = 10
//! [user]                   # a python: trainer's own keys, declared with defaults
//! hidden = 128
//! [grid]                   # axes: any train/probe/user key
//! lr = { log = [0.02, 0.2], num = 4 }
//! batch_size = [8, 32, 128]
//! [[grid.zip]]             # lists of equal length paired into one axis
//! momentum = [0.0, 0.9]
//! weight_decay = [0.0, 1e-4]
//! ```
//!
//! Axes form a product in the order they appear (the first varies slowest);
//! each seed of each cell is one run. Every error names the file, the line
//! and column, and the rule broken; nothing is produced unless the whole
//! file is valid.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::data::DatasetName;
use crate::model::Model;
use crate::spec::{ProbeConfig, RunSpec, TrainConfig, Trainer};

/// Default cap on the number of runs a grid may expand to.
pub const DEFAULT_MAX_RUNS: usize = 1_000_000;

/// One problem in a grid file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridIssue {
    /// The file name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What rule is broken.
    pub message: String,
}

impl fmt::Display for GridIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.message)
    }
}

/// All problems found in a grid file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GridError {
    /// The problems, in file order.
    pub issues: Vec<GridIssue>,
}

impl fmt::Display for GridError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.issues.iter().map(|i| i.to_string()).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

/// Limits applied while expanding.
#[derive(Debug, Clone, Copy)]
pub struct GridLimits {
    /// Largest number of runs (cells × seeds) accepted.
    pub max_runs: usize,
}

impl Default for GridLimits {
    fn default() -> Self {
        GridLimits { max_runs: DEFAULT_MAX_RUNS }
    }
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Position in the grid, from 0.
    pub index: u32,
    /// The axis values that define this cell, by key.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Full training configuration.
    pub train: TrainConfig,
    /// Full probe configuration.
    pub probe: ProbeConfig,
    /// The `[user]` keys with this cell's values (a `python:` trainer's
    /// own settings); left out of the plan's JSON when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, serde_json::Value>,
}

impl Cell {
    /// The spec of this cell's run with `seed`.
    pub fn run_spec(&self, seed: u64) -> RunSpec {
        RunSpec { train: self.train.clone(), probe: self.probe.clone(), seed, user: self.user.clone() }
    }
}

/// A validated, expanded grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPlan {
    /// Sweep name.
    pub name: String,
    /// Seeds; each cell runs once per seed.
    pub seeds: Vec<u64>,
    /// Axis keys in order.
    pub axes: Vec<String>,
    /// The cells.
    pub cells: Vec<Cell>,
    /// In what order the runs are queued. Left out of the plan's JSON (and
    /// so of its fingerprint) when it is the default.
    #[serde(default, skip_serializing_if = "QueueOrder::is_default")]
    pub order: QueueOrder,
}

/// The order in which a sweep's runs are queued (`[sweep] order`). It never
/// changes a result, only when each one is known and what the coordinator
/// stores meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueOrder {
    /// All seeds of a cell, then the next cell: cells complete one after
    /// another, and each completed cell's sketches give way to digests at
    /// once, so the coordinator holds the sketches of the cells in flight
    /// only.
    #[default]
    Cells,
    /// The first seed of every cell, then the second, …: a first picture of
    /// the whole grid early, but no cell completes before the last round,
    /// so every probe's sketch is stored until then.
    Seeds,
}

impl QueueOrder {
    fn is_default(&self) -> bool {
        *self == QueueOrder::default()
    }

    /// The place (0-based) in the queue of the `seed_pos`-th seed of the
    /// `cell_pos`-th cell, in a sweep of `cells` cells and `seeds` seeds.
    pub fn position(self, cell_pos: usize, seed_pos: usize, cells: usize, seeds: usize) -> usize {
        match self {
            QueueOrder::Cells => cell_pos * seeds + seed_pos,
            QueueOrder::Seeds => seed_pos * cells + cell_pos,
        }
    }
}

impl SweepPlan {
    /// Number of runs.
    pub fn run_count(&self) -> usize {
        self.cells.len() * self.seeds.len()
    }

    /// Canonical JSON of the plan: the same for every file that describes the
    /// same sweep, whatever its formatting, comments or key order.
    pub fn normalized_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of [`Self::normalized_json`], hex.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.normalized_json().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    name: Spanned<String>,
    #[serde(default)]
    seeds: Option<Spanned<toml::Value>>,
    #[serde(default)]
    order: Option<Spanned<String>>,
}

type RawTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    sweep: Spanned<RawSweep>,
    #[serde(default)]
    train: RawTable,
    #[serde(default)]
    probe: RawTable,
    #[serde(default)]
    user: RawTable,
    #[serde(default)]
    grid: Option<Spanned<RawTable>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Train,
    Probe,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Str,
    /// Integer with a minimum.
    Int(i64),
    /// Float > 0.
    Positive,
    /// Float ≥ 0.
    NonNegative,
    /// Float in [0, 1).
    Fraction,
    /// Any finite float.
    Real,
    Bool,
    /// A list of non-negative integers.
    IntList,
    /// One of the given strings.
    Choice(&'static [&'static str]),
    /// An integer at least this, or the string "auto".
    IntOrAuto(i64),
    /// A trainer's name ([`Trainer::parse`]).
    Trainer,
    /// A `[user]` key: any string, number, boolean, or list or table of them.
    Any,
}

/// One grid key: its section, the values it takes, and its meaning.
struct KeyDef {
    name: &'static str,
    section: Section,
    kind: Kind,
    doc: &'static str,
}

/// Every key of `[train]` and `[probe]`, declared once: where it goes,
/// what values it takes, and what it means (`gradsweep keys`, docs/grid.md).
const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "model",
        section: Section::Train,
        kind: Kind::Str,
        doc: "The network: a named model (`gradsweep models`), `linear:IN-OUT`, or `mlp:W0-W1-…-Wk[+bn]`.",
    },
    KeyDef {
        name: "dataset",
        section: Section::Train,
        kind: Kind::Str,
        doc: "The data set: `digits` (bundled 8×8), `mnist`, `fashion-mnist`, `cifar10`, `teacher[:…]` (synthetic), or `csv:PATH`; see the README's \"Models and data sets\".",
    },
    KeyDef { name: "epochs", section: Section::Train, kind: Kind::Int(1), doc: "Passes over the training set." },
    KeyDef { name: "lr", section: Section::Train, kind: Kind::Positive, doc: "Learning rate η." },
    KeyDef {
        name: "batch_size",
        section: Section::Train,
        kind: Kind::Int(1),
        doc: "Mini-batch size b; with `lr`, sets the temperature β⁻¹ = η/(2b).",
    },
    KeyDef { name: "momentum", section: Section::Train, kind: Kind::Fraction, doc: "Heavy-ball momentum in [0, 1)." },
    KeyDef {
        name: "weight_decay",
        section: Section::Train,
        kind: Kind::NonNegative,
        doc: "λ: adds (λ/2)‖x‖² to the loss.",
    },
    KeyDef {
        name: "replacement",
        section: Section::Train,
        kind: Kind::Bool,
        doc: "Draw mini-batches with replacement (the paper's β⁻¹ = η/(2b) assumes it; without, the temperature gains a factor (1 − b/N)).",
    },
    KeyDef {
        name: "test_fraction",
        section: Section::Train,
        kind: Kind::Fraction,
        doc: "Share of the samples held out for testing, for data sets without an official split.",
    },
    KeyDef {
        name: "split_seed",
        section: Section::Train,
        kind: Kind::Int(0),
        doc: "Seed of the train/test split (the same for every run of the sweep).",
    },
    KeyDef {
        name: "data_dir",
        section: Section::Train,
        kind: Kind::Str,
        doc: "Folder of file-based data sets as the workers see it (empty: `$GRADSWEEP_DATA_DIR`, then `./data`).",
    },
    KeyDef {
        name: "classes",
        section: Section::Train,
        kind: Kind::IntList,
        doc: "Keep only these classes, relabelled 0..k (empty: all).",
    },
    KeyDef {
        name: "downsample",
        section: Section::Train,
        kind: Kind::Int(1),
        doc: "Average-pool images by this factor (1: none).",
    },
    KeyDef {
        name: "normalize",
        section: Section::Train,
        kind: Kind::Bool,
        doc: "Standardise inputs with the training set's mean and deviation.",
    },
    KeyDef { name: "nesterov", section: Section::Train, kind: Kind::Bool, doc: "Nesterov momentum." },
    KeyDef {
        name: "lr_schedule",
        section: Section::Train,
        kind: Kind::Choice(&["constant", "step", "multistep", "cosine"]),
        doc: "How η changes: `constant`, `step` (× `lr_gamma` every `lr_step_epochs`), `multistep` (× `lr_gamma` at each of `lr_milestones`), `cosine`.",
    },
    KeyDef {
        name: "lr_step_epochs",
        section: Section::Train,
        kind: Kind::Int(1),
        doc: "Epochs between steps of the `step` schedule.",
    },
    KeyDef {
        name: "lr_milestones",
        section: Section::Train,
        kind: Kind::IntList,
        doc: "Epochs at which the `multistep` schedule multiplies η by `lr_gamma`.",
    },
    KeyDef {
        name: "lr_gamma",
        section: Section::Train,
        kind: Kind::Positive,
        doc: "Factor of each step of the `step` and `multistep` schedules.",
    },
    KeyDef {
        name: "checkpoint_every_epochs",
        section: Section::Train,
        kind: Kind::Int(0),
        doc: "Checkpoint every this many epochs (segment boundaries; never change results; 0: none).",
    },
    KeyDef {
        name: "checkpoint_every_steps",
        section: Section::Train,
        kind: Kind::Int(0),
        doc: "Checkpoint every this many steps as well (0: none).",
    },
    KeyDef {
        name: "control_lambda",
        section: Section::Train,
        kind: Kind::Real,
        doc: "`control:` models only: the strength λ of the rotational force (0: detailed balance); see docs/limit-cycles.md.",
    },
    KeyDef {
        name: "control_steps",
        section: Section::Train,
        kind: Kind::Int(1),
        doc: "`control:` models only: Euler–Maruyama steps per epoch, each of length `lr` (default 1000).",
    },
    KeyDef {
        name: "trainer",
        section: Section::Train,
        kind: Kind::Trainer,
        doc: "Who trains the runs: `builtin` (gradsweep's engine) or `python:MODULE:FUNCTION`, a function of yours that Python workers run; a run goes only to a worker that declared its trainer, and `[user]` keys are allowed only with `python:` trainers.",
    },
    KeyDef {
        name: "every_epochs",
        section: Section::Probe,
        kind: Kind::Int(1),
        doc: "Probe D every this many epochs, and after the last epoch.",
    },
    KeyDef {
        name: "at_epochs",
        section: Section::Probe,
        kind: Kind::IntList,
        doc: "Probe at these epochs instead (each in 1..=epochs).",
    },
    KeyDef {
        name: "sketch_rank",
        section: Section::Probe,
        kind: Kind::IntOrAuto(1),
        doc: "Frequent Directions rows ℓ, or `auto`: each probe sizes its sketch until the rank at the paper's threshold is resolved.",
    },
    KeyDef {
        name: "memory_mb",
        section: Section::Probe,
        kind: Kind::Int(16),
        doc: "What one probe may use, in MiB: bounds an auto probe's ℓ and how many idle slots help; a fixed ℓ above it is refused.",
    },
    KeyDef {
        name: "shard_samples",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Samples per probe shard; shards are computed by idle slots and idle workers and merged in shard order (0: one shard).",
    },
    KeyDef {
        name: "save_gradients",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Keep each probe's first N per-sample gradient rows and its weights, written as NPY by `local` and `results --out`.",
    },
    KeyDef {
        name: "keep_sketches",
        section: Section::Probe,
        kind: Kind::Bool,
        doc: "Keep every probe's whole sketch after its cell is merged (by default each keeps a digest: eigenvalues, Δ, moments, and `digest_vectors` top eigenvectors).",
    },
    KeyDef {
        name: "digest_vectors",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Top eigenvectors of D each probe's digest keeps once its cell is merged (4·d bytes each, at most 10); the results never read them again.",
    },
    KeyDef {
        name: "projections",
        section: Section::Probe,
        kind: Kind::Int(2),
        doc: "Directions the trajectory is projected on, for the drift statistics.",
    },
    KeyDef {
        name: "basis",
        section: Section::Probe,
        kind: Kind::Choice(&["random", "eigen"]),
        doc: "Projection directions: `random`, or `eigen` (the top eigenvectors of D at probe `basis_probe`).",
    },
    KeyDef {
        name: "basis_probe",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "The probe whose eigenvectors form the `eigen` basis; recording starts after it.",
    },
    KeyDef {
        name: "max_lag",
        section: Section::Probe,
        kind: Kind::Int(1),
        doc: "Largest lag of the lagged covariances and autocorrelations, in steps.",
    },
    KeyDef {
        name: "burn_in_epochs",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Epochs before the trajectory is recorded.",
    },
    KeyDef {
        name: "projection_seed",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Seed of the random projection directions.",
    },
    KeyDef {
        name: "block_size",
        section: Section::Probe,
        kind: Kind::Int(1),
        doc: "Samples per block of per-sample gradients fed to the sketch.",
    },
    KeyDef {
        name: "psd_window",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Welch window of the trajectory's power spectrum, a power of two in 8..=4096 (0: none).",
    },
    KeyDef {
        name: "epoch_psd_window",
        section: Section::Probe,
        kind: Kind::Int(0),
        doc: "Record the trajectory once per epoch too, with Welch windows of this many epochs (a power of two in 8..=4096; 0: not): per-epoch drift, every weight's increment spectrum, the weight-norm trend and a surrogate test for spectral peaks; keeps W × d increments (see docs/limit-cycles.md).",
    },
    KeyDef {
        name: "wire_precision",
        section: Section::Probe,
        kind: Kind::Choice(&["f32", "f16"]),
        doc: "Precision of sketch rows on the wire: `f32`, or `f16` (half the bytes; the rounding is measured and widened into every bracket).",
    },
    KeyDef {
        name: "exact",
        section: Section::Probe,
        kind: Kind::Bool,
        doc: "Also compute D densely at each probe (d ≤ 4096), as a check on the sketch.",
    },
];

/// One grid key as `gradsweep keys` and docs/grid.md list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReference {
    /// The key.
    pub name: &'static str,
    /// Its section: `train` or `probe` (and any key may be an axis of `[grid]`).
    pub section: &'static str,
    /// The values it takes, as the parser checks them.
    pub values: String,
    /// Its value when the grid leaves it out, as TOML.
    pub default: String,
    /// What it means.
    pub meaning: &'static str,
}

/// Every `[train]` and `[probe]` key with its values, default and
/// meaning, in the order of the declaration the parser uses.
pub fn key_reference() -> Vec<KeyReference> {
    // Fields left out of the serialised spec at their defaults (so that
    // adding them changed no fingerprint) have their defaults here.
    let (t, d) = (TrainConfig::default(), ProbeConfig::default());
    let skipped: [(Section, &str, serde_json::Value); 10] = [
        (Section::Train, "trainer", t.trainer.name().into()),
        (Section::Train, "control_lambda", t.control_lambda.into()),
        (Section::Train, "control_steps", t.control_steps.into()),
        (Section::Probe, "at_epochs", serde_json::json!(d.at_epochs)),
        (Section::Probe, "memory_mb", d.memory_mb.into()),
        (Section::Probe, "shard_samples", d.shard_samples.into()),
        (Section::Probe, "save_gradients", d.save_gradients.into()),
        (Section::Probe, "keep_sketches", d.keep_sketches.into()),
        (Section::Probe, "digest_vectors", d.digest_vectors.into()),
        (Section::Probe, "epoch_psd_window", d.epoch_psd_window.into()),
    ];
    let mut train = serde_json::to_value(&t).unwrap_or_default();
    let mut probe = serde_json::to_value(&d).unwrap_or_default();
    for (section, k, v) in skipped {
        let target = if section == Section::Train { &mut train } else { &mut probe };
        if let Some(p) = target.as_object_mut() {
            p.entry(k).or_insert(v);
        }
    }
    KEYS.iter()
        .map(|k| {
            let defaults = if k.section == Section::Train { &train } else { &probe };
            let default = match (k.name, defaults.get(k.name)) {
                ("sketch_rank", Some(serde_json::Value::Null) | None) => "\"auto\"".to_string(),
                (_, Some(serde_json::Value::Null) | None) => "none".to_string(),
                (_, Some(v)) => v.to_string(),
            };
            KeyReference {
                name: k.name,
                section: section_name(k.section),
                values: kind_name(k.kind),
                default,
                meaning: k.doc,
            }
        })
        .collect()
}

/// docs/grid.md: the grid file's sections and every key, generated from
/// the declaration the parser uses (`gradsweep keys --markdown`); a test
/// fails when the file in the repository is stale.
pub fn grid_reference_markdown() -> String {
    let mut out = String::from(
        "# The grid file\n\n\
         <!-- Generated by `gradsweep keys --markdown` from shared/src/grid.rs; do not edit. -->\n\n\
         A grid file (TOML) has up to five sections. `[sweep]` names the sweep and its seeds: `name` (the output \
         folder's name: no `/`, `\\`, `.` or `..`), `seeds` (a list of non-negative integers, or a count n \
         meaning 0..n) and `order`, how the runs are queued: `\"cells\"` (the default: all seeds of a cell, then the \
         next cell, so each completed cell's sketches give way to digests at once) or `\"seeds\"` (the first seed of \
         every cell, then the second, …: an early picture of the whole grid, but every sketch is stored until the \
         last round). `[train]` and `[probe]` set the keys below for every run. `[user]` declares a `python:` \
         trainer's own keys with their defaults (identifiers other than the keys below and `seed`; strings, numbers, \
         booleans, lists and tables), handed to the trainer as `run.params`. `[grid]` makes axes of any of \
         them: a list (`batch_size = [8, 32, 128]`), `{ lin = [a, b], num = n }` or `{ log = [a, b], num = n }`; \
         `[[grid.zip]]` pairs lists of equal length into one axis. Axes form a product in the order they appear \
         (the first varies slowest), and each seed of each cell is one run. Every error names the file, the line \
         and column, and the rule broken.\n\n\
         | key | section | values | default | meaning |\n|---|---|---|---|---|\n",
    );
    for k in key_reference() {
        let cell = |t: &str| t.replace('|', "\\|");
        out.push_str(&format!(
            "| `{}` | {} | {} | `{}` | {} |\n",
            k.name,
            k.section,
            cell(&k.values),
            cell(&k.default),
            cell(k.meaning)
        ));
    }
    out
}

fn key_def(name: &str) -> Option<(Section, Kind)> {
    KEYS.iter().find(|k| k.name == name).map(|k| (k.section, k.kind))
}

fn kind_name(k: Kind) -> String {
    match k {
        Kind::Str => "a string".into(),
        Kind::Int(min) => format!("an integer ≥ {min}"),
        Kind::IntOrAuto(min) => format!("an integer ≥ {min} or \"auto\""),
        Kind::Positive => "a number > 0".into(),
        Kind::NonNegative => "a number ≥ 0".into(),
        Kind::Fraction => "a number in [0, 1)".into(),
        Kind::Real => "a finite number".into(),
        Kind::Bool => "true or false".into(),
        Kind::IntList => "a list of non-negative integers".into(),
        Kind::Choice(c) => format!("one of {}", c.iter().map(|x| format!("\"{x}\"")).collect::<Vec<_>>().join(", ")),
        Kind::Trainer => "\"builtin\" or \"python:MODULE:FUNCTION\"".into(),
        Kind::Any => "a string, number, boolean, or list or table of them".into(),
    }
}

/// Checks one value against its key's rule; returns it normalised to JSON.
fn check_value(key: &str, kind: Kind, v: &toml::Value) -> Result<serde_json::Value, String> {
    let wrong = || format!("`{key}` must be {}, found {}", kind_name(kind), describe(v));
    match kind {
        Kind::Str => v.as_str().map(|s| serde_json::Value::from(s.to_string())).ok_or_else(wrong),
        Kind::Bool => v.as_bool().map(serde_json::Value::from).ok_or_else(wrong),
        Kind::IntList => {
            let items = v.as_array().ok_or_else(wrong)?;
            let ints: Option<Vec<i64>> = items.iter().map(|x| x.as_integer().filter(|&i| i >= 0)).collect();
            ints.map(serde_json::Value::from).ok_or_else(wrong)
        }
        Kind::Trainer => {
            let name = v.as_str().ok_or_else(wrong)?;
            Trainer::parse(name).map_err(|e| format!("`{key}`: {e}"))?;
            Ok(serde_json::Value::from(name))
        }
        Kind::Any => user_value(key, v),
        Kind::Choice(options) => match v.as_str() {
            Some(x) if options.contains(&x) => Ok(serde_json::Value::from(x)),
            _ => Err(wrong()),
        },
        Kind::IntOrAuto(_) if v.as_str() == Some("auto") => Ok(serde_json::Value::from("auto")),
        Kind::Int(min) | Kind::IntOrAuto(min) => {
            let i = v.as_integer().ok_or_else(wrong)?;
            if i < min {
                return Err(format!("`{key}` must be ≥ {min}, found {i}"));
            }
            Ok(serde_json::Value::from(i))
        }
        Kind::Positive | Kind::NonNegative | Kind::Fraction | Kind::Real => {
            let f = v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).ok_or_else(wrong)?;
            let ok = f.is_finite()
                && match kind {
                    Kind::Positive => f > 0.0,
                    Kind::NonNegative => f >= 0.0,
                    Kind::Real => true,
                    _ => (0.0..1.0).contains(&f),
                };
            if !ok {
                return Err(format!("`{key}` must be {}, found {f}", kind_name(kind)));
            }
            Ok(serde_json::json!(f))
        }
    }
}

/// A `[user]` value as JSON: TOML's dates and non-finite numbers have no
/// JSON form and are refused.
fn user_value(key: &str, v: &toml::Value) -> Result<serde_json::Value, String> {
    Ok(match v {
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) if f.is_finite() => serde_json::json!(f),
        toml::Value::Float(f) => return Err(format!("`{key}` must be a finite number, found {f}")),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => {
            return Err(format!(
                "`{key}` is the date {d}: a user key takes strings, numbers, booleans, lists and tables"
            ));
        }
        toml::Value::Array(a) => a.iter().map(|x| user_value(key, x)).collect::<Result<Vec<_>, _>>()?.into(),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter().map(|(k, x)| Ok((k.clone(), user_value(key, x)?))).collect::<Result<_, String>>()?,
        ),
    })
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("the string \"{s}\""),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the number {f}"),
        toml::Value::Boolean(b) => format!("{b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    issues: Vec<GridIssue>,
    /// The keys `[user]` declares.
    user_keys: BTreeSet<String>,
}

impl Ctx<'_> {
    /// The rule of a key an axis may take: a train or probe key, or a
    /// declared `[user]` key.
    fn axis_kind(&self, key: &str) -> Option<Kind> {
        key_def(key).map(|d| d.1).or_else(|| self.user_keys.contains(key).then_some(Kind::Any))
    }

    fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.issues.push(GridIssue { file: self.file.to_string(), line, col, message: message.into() });
    }
}

/// Why a sweep name cannot be one folder inside the output folder (`local`
/// writes to `gradsweep-out/<name>`), if it cannot: a path separator,
/// `.` or `..`, a control character, or a length past what file systems
/// take.
fn unusable_as_folder(name: &str) -> Option<&'static str> {
    if name.contains(['/', '\\']) {
        Some("it may not contain `/` or `\\`")
    } else if name == "." || name == ".." {
        Some("it may not be `.` or `..`")
    } else if name.chars().any(char::is_control) {
        Some("it may not contain control characters")
    } else if name.len() > 200 {
        Some("it may be at most 200 bytes long")
    } else {
        None
    }
}

/// 1-based line and character column of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One axis: a key and its list of (value, where it came from).
struct Axis {
    keys: Vec<String>,
    /// points[i][k] is the value of keys[k] at position i.
    points: Vec<Vec<serde_json::Value>>,
    span: Range<usize>,
}

fn expand_axis(ctx: &mut Ctx<'_>, key: &str, kind: Kind, v: &Spanned<toml::Value>) -> Option<Vec<serde_json::Value>> {
    let span = v.span();
    match v.get_ref() {
        toml::Value::Array(items) => {
            if items.is_empty() {
                ctx.push(span, format!("axis `{key}` is empty"));
                return None;
            }
            let mut out = vec![];
            for it in items {
                match check_value(key, kind, it) {
                    Ok(x) => out.push(x),
                    Err(e) => {
                        ctx.push(span.clone(), format!("in axis `{key}`: {e}"));
                        return None;
                    }
                }
            }
            Some(out)
        }
        toml::Value::Table(t) => {
            let bad_form =
                format!("axis `{key}` must be a list, {{ log = [a, b], num = n }} or {{ lin = [a, b], num = n }}");
            let (mode, range) = match (t.get("log"), t.get("lin")) {
                (Some(r), None) => ("log", r),
                (None, Some(r)) => ("lin", r),
                _ => {
                    ctx.push(span, bad_form);
                    return None;
                }
            };
            if let Some(extra) = t.keys().find(|k| !["log", "lin", "num"].contains(&k.as_str())) {
                ctx.push(span, format!("unknown key `{extra}` in range of axis `{key}` ({bad_form})"));
                return None;
            }
            let ends: Option<Vec<f64>> = range
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
                        .collect::<Option<Vec<_>>>()
                })
                .unwrap_or(None);
            let Some([a, b]) = ends.as_deref().map(|e| <[f64; 2]>::try_from(e).ok()).unwrap_or(None) else {
                ctx.push(span, format!("`{mode}` of axis `{key}` must be a list of two numbers [a, b]"));
                return None;
            };
            let num = match t.get("num").and_then(|n| n.as_integer()) {
                Some(n) if n >= 1 => n as usize,
                _ => {
                    ctx.push(span, format!("`num` of axis `{key}` must be an integer ≥ 1"));
                    return None;
                }
            };
            if mode == "log" && (a <= 0.0 || b <= 0.0) {
                ctx.push(span, format!("`log` range of axis `{key}` needs positive ends, found [{a}, {b}]"));
                return None;
            }
            let mut out = vec![];
            for i in 0..num {
                let t = if num == 1 { 0.0 } else { i as f64 / (num - 1) as f64 };
                let x = if mode == "log" { (a.ln() + t * (b.ln() - a.ln())).exp() } else { a + t * (b - a) };
                let tv = match kind {
                    Kind::Int(_) => toml::Value::Integer(x.round() as i64),
                    Kind::Str | Kind::Bool | Kind::IntList | Kind::Choice(_) => {
                        ctx.push(span, format!("axis `{key}` takes {}, not a numeric range", kind_name(kind)));
                        return None;
                    }
                    _ => toml::Value::Float(x),
                };
                match check_value(key, kind, &tv) {
                    Ok(x) => {
                        if out.contains(&x) {
                            ctx.push(span, format!("range of axis `{key}` yields the value {x} twice"));
                            return None;
                        }
                        out.push(x)
                    }
                    Err(e) => {
                        ctx.push(span, format!("in axis `{key}`: {e}"));
                        return None;
                    }
                }
            }
            Some(out)
        }
        other => {
            ctx.push(span, format!("axis `{key}` must be a list or a range table, found {}", describe(other)));
            None
        }
    }
}

/// Parses, validates and expands a grid file. `file` names it in errors.
pub fn parse_grid(text: &str, file: &str, limits: GridLimits) -> Result<SweepPlan, GridError> {
    let mut ctx = Ctx { file, text, issues: vec![], user_keys: BTreeSet::new() };
    let raw: RawFile = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            ctx.push(span, msg);
            return Err(GridError { issues: ctx.issues });
        }
    };

    // Defaults from [train] and [probe]; remember where each value came from.
    let mut base: BTreeMap<String, (serde_json::Value, Range<usize>)> = BTreeMap::new();
    for (section, table) in [(Section::Train, &raw.train), (Section::Probe, &raw.probe)] {
        for (k, v) in table {
            let name = k.get_ref().as_str();
            match key_def(name) {
                Some((s, kind)) if s == section => match check_value(name, kind, v.get_ref()) {
                    Ok(x) => {
                        base.insert(name.to_string(), (x, v.span()));
                    }
                    Err(e) => ctx.push(v.span(), e),
                },
                Some((s, _)) => ctx.push(
                    k.span(),
                    format!("key `{name}` belongs in [{}], not [{}]", section_name(s), section_name(section)),
                ),
                None => ctx.push(
                    k.span(),
                    format!("unknown key `{name}` in [{}]{}", section_name(section), did_you_mean(name)),
                ),
            }
        }
    }

    // The trainer's own keys, declared with their defaults.
    for (k, v) in &raw.user {
        let name = k.get_ref().as_str();
        let identifier = name.chars().next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !identifier {
            ctx.push(k.span(), format!("[user] key `{name}` must be an identifier (letters, digits, `_`)"));
        } else if let Some((s, _)) = key_def(name) {
            ctx.push(
                k.span(),
                format!(
                    "`{name}` is gradsweep's own key (it belongs in [{}]); [user] keys are the trainer's own",
                    section_name(s)
                ),
            );
        } else if name == "seed" {
            ctx.push(k.span(), "`seed` is each run's own (set by [sweep] seeds); a [user] key may not take its name");
        } else {
            match user_value(name, v.get_ref()) {
                Ok(x) => {
                    ctx.user_keys.insert(name.to_string());
                    base.insert(name.to_string(), (x, v.span()));
                }
                Err(e) => ctx.push(v.span(), e),
            }
        }
    }

    // Seeds.
    let seeds: Vec<u64> = match &raw.sweep.get_ref().seeds {
        None => vec![0],
        Some(s) => match s.get_ref() {
            toml::Value::Integer(n) if *n >= 1 => (0..*n as u64).collect(),
            toml::Value::Array(a) if !a.is_empty() => {
                let v: Option<Vec<u64>> =
                    a.iter().map(|x| x.as_integer().filter(|&i| i >= 0).map(|i| i as u64)).collect();
                match v {
                    Some(v) => {
                        let mut sorted = v.clone();
                        sorted.sort_unstable();
                        sorted.dedup();
                        if sorted.len() != v.len() {
                            ctx.push(s.span(), "`seeds` lists a seed twice");
                        }
                        v
                    }
                    None => {
                        ctx.push(s.span(), "`seeds` must list non-negative integers");
                        vec![]
                    }
                }
            }
            _ => {
                ctx.push(s.span(), "`seeds` must be a non-empty list of non-negative integers or a count ≥ 1");
                vec![]
            }
        },
    };
    let name = raw.sweep.get_ref().name.get_ref().trim().to_string();
    if name.is_empty() {
        ctx.push(raw.sweep.get_ref().name.span(), "`name` must not be empty");
    } else if let Some(why) = unusable_as_folder(&name) {
        ctx.push(raw.sweep.get_ref().name.span(), format!("`name` {name:?} names the sweep's output folder: {why}"));
    }

    let order = match &raw.sweep.get_ref().order {
        None => QueueOrder::default(),
        Some(o) => match o.get_ref().as_str() {
            "cells" => QueueOrder::Cells,
            "seeds" => QueueOrder::Seeds,
            other => {
                ctx.push(o.span(), format!("`order` must be \"cells\" or \"seeds\", not {other:?}"));
                QueueOrder::default()
            }
        },
    };

    // Axes.
    let mut axes: Vec<Axis> = vec![];
    let grid_span = raw.grid.as_ref().map(|g| g.span()).unwrap_or(0..0);
    if let Some(grid) = &raw.grid {
        let mut entries: Vec<(&Spanned<String>, &Spanned<toml::Value>)> = grid.get_ref().iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (k, v) in entries {
            let key = k.get_ref().as_str();
            if key == "zip" {
                expand_zip(&mut ctx, v, &mut axes);
                continue;
            }
            let Some(kind) = ctx.axis_kind(key) else {
                ctx.push(
                    k.span(),
                    format!(
                        "unknown key `{key}` in [grid] (axes take train and probe keys, and [user] keys declared with \
                         their defaults){}",
                        did_you_mean(key)
                    ),
                );
                continue;
            };
            if let Some(points) = expand_axis(&mut ctx, key, kind, v) {
                axes.push(Axis {
                    keys: vec![key.to_string()],
                    points: points.into_iter().map(|p| vec![p]).collect(),
                    span: v.span(),
                });
            }
        }
    }
    let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for a in &axes {
        for k in &a.keys {
            if seen.insert(k.clone(), a.span.clone()).is_some() {
                ctx.push(a.span.clone(), format!("key `{k}` is an axis twice"));
            }
        }
    }
    if !ctx.issues.is_empty() {
        return Err(GridError { issues: ctx.issues });
    }

    let cells_count: usize = axes.iter().map(|a| a.points.len()).product();
    let runs = cells_count.saturating_mul(seeds.len());
    if runs > limits.max_runs {
        ctx.push(
            grid_span,
            format!("the grid expands to {runs} runs, more than the limit of {} (--max-runs)", limits.max_runs),
        );
        return Err(GridError { issues: ctx.issues });
    }

    // Expand the product; the first axis varies slowest.
    let mut cells = vec![];
    for index in 0..cells_count {
        let mut rem = index;
        let mut choice = vec![0; axes.len()];
        for (ai, a) in axes.iter().enumerate().rev() {
            choice[ai] = rem % a.points.len();
            rem /= a.points.len();
        }
        let mut values = base.clone();
        let mut params = BTreeMap::new();
        for (a, &c) in axes.iter().zip(&choice) {
            for (k, v) in a.keys.iter().zip(&a.points[c]) {
                values.insert(k.clone(), (v.clone(), a.span.clone()));
                params.insert(k.clone(), v.clone());
            }
        }
        match build_cell(&mut ctx, index as u32, params, &values) {
            Some(cell) => cells.push(cell),
            None => break, // one cell's errors are enough to show
        }
    }
    if !ctx.issues.is_empty() {
        return Err(GridError { issues: ctx.issues });
    }
    Ok(SweepPlan { name, seeds, axes: axes.iter().flat_map(|a| a.keys.clone()).collect(), cells, order })
}

/// Names other tools give the grid's keys, and the key each means here.
const KEY_ALIASES: &[(&str, &str)] = &[
    ("learning_rate", "lr"),
    ("learning-rate", "lr"),
    ("eta", "lr"),
    ("batch", "batch_size"),
    ("batchsize", "batch_size"),
    ("bs", "batch_size"),
    ("epoch", "epochs"),
    ("n_epochs", "epochs"),
    ("num_epochs", "epochs"),
    ("rank", "sketch_rank"),
    ("ell", "sketch_rank"),
    ("wd", "weight_decay"),
];

/// `; did you mean `k`?` for the declared key an unknown one most likely
/// means (a known alias, or at most two edits away), else nothing.
fn did_you_mean(unknown: &str) -> String {
    let lower = unknown.to_ascii_lowercase();
    let alias = KEY_ALIASES.iter().find(|(a, _)| *a == lower).map(|(_, k)| *k);
    let near =
        || KEYS.iter().map(|k| (edit_distance(&lower, k.name), k.name)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k);
    alias.or_else(near).map_or(String::new(), |k| format!("; did you mean `{k}`?"))
}

/// Levenshtein distance between two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn section_name(s: Section) -> &'static str {
    match s {
        Section::Train => "train",
        Section::Probe => "probe",
    }
}

fn expand_zip(ctx: &mut Ctx<'_>, v: &Spanned<toml::Value>, axes: &mut Vec<Axis>) {
    let span = v.span();
    let groups: Vec<&toml::Table> = match v.get_ref() {
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => a.iter().filter_map(|x| x.as_table()).collect(),
        toml::Value::Table(t) => vec![t],
        _ => {
            ctx.push(span, "`zip` must be a table ([grid.zip]) or tables ([[grid.zip]]) of equal-length lists");
            return;
        }
    };
    for g in groups {
        let mut keys = vec![];
        let mut cols: Vec<Vec<serde_json::Value>> = vec![];
        for (k, val) in g {
            let Some(kind) = ctx.axis_kind(k) else {
                ctx.push(span.clone(), format!("unknown key `{k}` in a zip group{}", did_you_mean(k)));
                return;
            };
            let Some(list) = val.as_array() else {
                ctx.push(span.clone(), format!("zip key `{k}` must be a list"));
                return;
            };
            let mut col = vec![];
            for it in list {
                match check_value(k, kind, it) {
                    Ok(x) => col.push(x),
                    Err(e) => {
                        ctx.push(span.clone(), format!("in zip key `{k}`: {e}"));
                        return;
                    }
                }
            }
            keys.push(k.clone());
            cols.push(col);
        }
        let lens: Vec<usize> = cols.iter().map(|c| c.len()).collect();
        if lens.is_empty() || lens.contains(&0) {
            ctx.push(span.clone(), "a zip group needs at least one non-empty list");
            return;
        }
        if lens.iter().any(|&l| l != lens[0]) {
            let desc: Vec<String> = keys.iter().zip(&lens).map(|(k, l)| format!("`{k}` has {l}")).collect();
            ctx.push(span.clone(), format!("zip lists must have equal lengths: {}", desc.join(", ")));
            return;
        }
        let points = (0..lens[0]).map(|i| cols.iter().map(|c| c[i].clone()).collect()).collect();
        axes.push(Axis { keys, points, span: span.clone() });
    }
}

/// A section's configuration from its JSON, or an issue at the key whose
/// value the field cannot hold (an integer too large for it, a negative
/// count): a value that passed the key's own check is never dropped
/// silently with its cell.
fn typed<T: serde::de::DeserializeOwned + Serialize + Default>(
    ctx: &mut Ctx<'_>,
    json: serde_json::Value,
    section: Section,
    values: &BTreeMap<String, (serde_json::Value, Range<usize>)>,
    cell_desc: &str,
) -> Option<T> {
    let err = match serde_json::from_value::<T>(json) {
        Ok(t) => return Some(t),
        Err(e) => e,
    };
    // Find the key: each of this section's values alone on the defaults.
    let default = serde_json::to_value(T::default()).unwrap_or_default();
    let mut named = false;
    for (k, (v, span)) in values.iter().filter(|(k, _)| key_def(k).map(|d| d.0) == Some(section)) {
        let mut one = default.clone();
        one[k.as_str()] = v.clone();
        if let Err(e) = serde_json::from_value::<T>(one) {
            ctx.push(span.clone(), format!("`{k}` = {v} does not fit: {e}{cell_desc}"));
            named = true;
        }
    }
    if !named {
        ctx.push(0..0, format!("the [{}] values do not fit together: {err}{cell_desc}", section_name(section)));
    }
    None
}

fn build_cell(
    ctx: &mut Ctx<'_>,
    index: u32,
    params: BTreeMap<String, serde_json::Value>,
    values: &BTreeMap<String, (serde_json::Value, Range<usize>)>,
) -> Option<Cell> {
    let mut train = serde_json::to_value(TrainConfig::default()).ok()?;
    let mut probe = serde_json::to_value(ProbeConfig::default()).ok()?;
    let mut user = BTreeMap::new();
    for (k, (v, _)) in values {
        let target = match key_def(k).map(|d| d.0) {
            Some(Section::Train) => &mut train,
            Some(Section::Probe) => &mut probe,
            // Only declared [user] keys reach the values.
            None => {
                user.insert(k.clone(), v.clone());
                continue;
            }
        };
        target[k.as_str()] = v.clone();
    }
    let cell_desc = if params.is_empty() { String::new() } else { format!(" (cell {index}: {})", fmt_params(&params)) };
    let train: TrainConfig = typed(ctx, train, Section::Train, values, &cell_desc)?;
    let probe: ProbeConfig = typed(ctx, probe, Section::Probe, values, &cell_desc)?;
    let span_of = |k: &str| values.get(k).map(|(_, s)| s.clone()).unwrap_or(0..0);
    let before = ctx.issues.len();

    let mut train = train;
    // A python: trainer's model and data are its own: gradsweep checks the
    // keys it acts on itself (probes, trajectories, checkpoints) and hands
    // the rest to the trainer as they are.
    let python = !train.trainer.is_builtin();
    if python {
        if train.model.starts_with(crate::controls::CONTROL_PREFIX) {
            ctx.push(
                span_of("model"),
                format!("`{}` is gradsweep's own process: it needs `trainer = \"builtin\"`{cell_desc}", train.model),
            );
        }
        for key in NOT_FOR_PYTHON.iter().filter(|k| values.contains_key(**k)) {
            ctx.push(
                span_of(key),
                format!(
                    "`{key}` does not apply to trainer `{}`: gradsweep computes no gradients of a python: trainer's \
                     model (the trainer streams them to `run.probe`); remove it{cell_desc}",
                    train.trainer
                ),
            );
        }
    } else if let Some(k) = user.keys().next() {
        ctx.push(
            span_of(k),
            format!(
                "[user] keys are read by python: trainers only; the built-in engine would ignore `{k}` (set \
                 `trainer = \"python:MODULE:FUNCTION\"`, or remove [user]){cell_desc}"
            ),
        );
    }
    let control = if python {
        None
    } else {
        match crate::controls::Control::of_model(&train.model) {
            Ok(c) => c,
            Err(e) => {
                ctx.push(span_of("model"), format!("{e}{cell_desc}"));
                return None;
            }
        }
    };
    if control.is_some() {
        // A control has no data set: say so in every spec and result.
        train.dataset = CONTROL_DATASET.into();
        for key in NOT_FOR_CONTROLS.iter().filter(|k| values.contains_key(**k)) {
            ctx.push(
                span_of(key),
                format!(
                    "`{key}` does not apply to `{}`: a control moves by Euler–Maruyama with time step `lr` for \
                     `control_steps` steps per epoch, records its two coordinates and has no probes; remove it{cell_desc}",
                    train.model
                ),
            );
        }
    } else {
        for key in ["control_lambda", "control_steps"].into_iter().filter(|k| values.contains_key(*k)) {
            ctx.push(
                span_of(key),
                format!("`{key}` applies only to `control:` models, not `{}`{cell_desc}", train.model),
            );
        }
    }

    let opts = train.data_options();
    let ds = if control.is_some() || python {
        None
    } else {
        match DatasetName::parse(&train.dataset) {
            Ok(d) => {
                let official = d.has_official_split();
                match opts.apply_to_info(d.info()) {
                    Ok(info) => Some((info, official)),
                    Err(e) => {
                        let key = if e.contains("class") { "classes" } else { "downsample" };
                        ctx.push(span_of(key), format!("dataset `{}`: {e}{cell_desc}", train.dataset));
                        None
                    }
                }
            }
            Err(e) => {
                ctx.push(span_of("dataset"), format!("{e}{cell_desc}"));
                None
            }
        }
    };
    let model = if control.is_some() || python {
        None
    } else {
        match Model::parse(&train.model) {
            Ok(m) => Some(m),
            Err(e) => {
                ctx.push(span_of("model"), format!("{e}{cell_desc}"));
                None
            }
        }
    };
    // Shapes of file-less data sets are only known to the worker (csv).
    if let Some((info, official)) = ds.filter(|(i, _)| i.classes > 0) {
        if let Some(samples) = info.train_samples {
            let n_train = if official {
                samples
            } else {
                samples - (((samples as f64) * train.test_fraction).round() as usize).min(samples - 1)
            };
            if train.batch_size as usize > n_train {
                ctx.push(
                    span_of("batch_size"),
                    format!(
                        "`batch_size` {} is larger than the training set ({n_train} samples of `{}`){cell_desc}",
                        train.batch_size, train.dataset
                    ),
                );
            }
        }
        if let Some(m) = &model {
            let image_model = m.input_shape().h * m.input_shape().w > 1;
            let fits = if image_model { m.input_shape() == info.shape } else { m.input_dim() == info.shape.size() };
            if !fits || m.classes() != info.classes {
                ctx.push(
                    span_of("model"),
                    format!(
                        "model `{}` takes input {} and {} classes but dataset `{}` gives {} and {} classes{cell_desc}",
                        train.model,
                        m.input_shape(),
                        m.classes(),
                        train.dataset,
                        info.shape,
                        info.classes
                    ),
                );
            }
        }
    }
    if let Some(m) = &model
        && probe.exact
        && m.param_count() > crate::spec::EXACT_MAX_DIM
    {
        ctx.push(
            span_of("exact"),
            format!(
                "`exact` needs d ≤ {}, but `{}` has {} parameters{cell_desc}",
                crate::spec::EXACT_MAX_DIM,
                train.model,
                m.param_count()
            ),
        );
    }
    if probe.projections > crate::spec::MAX_PROJECTIONS {
        ctx.push(
            span_of("projections"),
            format!(
                "`projections` must be at most {} (the trajectory sums cost projections² per lag per step){cell_desc}",
                crate::spec::MAX_PROJECTIONS
            ),
        );
    }
    if let Some(m) = &model
        && probe.projections as usize > m.param_count()
    {
        ctx.push(span_of("projections"), format!("`projections` exceeds the model's {} parameters", m.param_count()));
    }
    if probe.basis == crate::spec::ProjectionBasis::Eigen && python {
        ctx.push(
            span_of("basis"),
            format!(
                "`basis = \"eigen\"` is not available to python: trainers yet: their trajectories are projected on \
                 the sweep's seeded random directions (`basis = \"random\"`){cell_desc}"
            ),
        );
    } else if probe.basis == crate::spec::ProjectionBasis::Eigen && control.is_none() {
        let spec =
            crate::spec::RunSpec { train: train.clone(), probe: probe.clone(), seed: 0, user: Default::default() };
        let epochs = spec.probe_epochs();
        match epochs.get(probe.basis_probe as usize) {
            None => ctx.push(
                span_of("basis_probe"),
                format!("`basis_probe` is {}, but there are {} probes{cell_desc}", probe.basis_probe, epochs.len()),
            ),
            Some(&e) if e >= train.epochs => ctx.push(
                span_of("basis_probe"),
                format!(
                    "`basis_probe` {} is taken after the last epoch: no trajectory would be recorded{cell_desc}",
                    probe.basis_probe
                ),
            ),
            _ => {}
        }
        if let Some(ell) = probe.sketch_rank.fixed()
            && probe.projections > ell
        {
            ctx.push(
                span_of("projections"),
                format!(
                    "`projections` ({}) exceeds `sketch_rank` ({ell}): the sketch has no more eigenvectors{cell_desc}",
                    probe.projections
                ),
            );
        }
    }
    if let Some(m) = &model
        && let Some(ell) = probe.sketch_rank.fixed()
    {
        let d = m.param_count();
        let need = crate::sketch::probe_memory_bytes(d, ell as usize, probe.block_size.max(1) as usize);
        if need > probe.memory_mb as u64 * 1024 * 1024 {
            ctx.push(
                span_of("sketch_rank"),
                format!(
                    "`sketch_rank` {ell} needs about {} MiB per probe at d = {d}, more than `memory_mb` = {}; \
                     raise `memory_mb`, lower `sketch_rank`, or use \"auto\"{cell_desc}",
                    need.div_ceil(1024 * 1024),
                    probe.memory_mb
                ),
            );
        }
    }
    if let Some(m) = &model
        && probe.save_gradients > 0
    {
        let d = m.param_count() as u64;
        let need = probe.save_gradients as u64 * d * 4;
        if need > probe.memory_mb as u64 * 1024 * 1024 {
            ctx.push(
                span_of("save_gradients"),
                format!(
                    "`save_gradients` {} keeps {} MiB of rows per probe at d = {d}, more than `memory_mb` = {}; \
                     keep fewer rows or raise `memory_mb`{cell_desc}",
                    probe.save_gradients,
                    need.div_ceil(1024 * 1024),
                    probe.memory_mb
                ),
            );
        }
    }
    if probe.digest_vectors as usize > crate::results::OVERLAP_K {
        ctx.push(
            span_of("digest_vectors"),
            format!(
                "`digest_vectors` {} exceeds {}: a merge computes no more eigenvectors per probe{cell_desc}",
                probe.digest_vectors,
                crate::results::OVERLAP_K
            ),
        );
    }
    if !crate::trajectory::valid_psd_window(probe.psd_window as usize) {
        ctx.push(
            span_of("psd_window"),
            format!("`psd_window` must be 0 or a power of two in 8..=4096, found {}{cell_desc}", probe.psd_window),
        );
    }
    let epoch_window = probe.epoch_psd_window;
    if !crate::trajectory::valid_psd_window(epoch_window as usize) {
        ctx.push(
            span_of("epoch_psd_window"),
            format!("`epoch_psd_window` must be 0 or a power of two in 8..=4096, found {epoch_window}{cell_desc}"),
        );
    } else if epoch_window > 0 && train.epochs.saturating_sub(probe.burn_in_epochs) <= epoch_window {
        ctx.push(
            span_of("epoch_psd_window"),
            format!(
                "`epoch_psd_window` ({epoch_window}) needs more recorded epochs than one window: the run records {} \
                 (`epochs` {} − `burn_in_epochs` {}){cell_desc}",
                train.epochs.saturating_sub(probe.burn_in_epochs),
                train.epochs,
                probe.burn_in_epochs
            ),
        );
    }
    if let Some(&e) = probe.at_epochs.iter().find(|&&e| e == 0 || e > train.epochs) {
        ctx.push(
            span_of("at_epochs"),
            format!("`at_epochs` has {e}, outside 1..={} (the run's epochs){cell_desc}", train.epochs),
        );
    }
    if probe.burn_in_epochs >= train.epochs {
        ctx.push(
            span_of("burn_in_epochs"),
            format!(
                "`burn_in_epochs` ({}) must be less than `epochs` ({}){cell_desc}",
                probe.burn_in_epochs, train.epochs
            ),
        );
    }
    (ctx.issues.len() == before).then_some(Cell { index, params, train, probe, user })
}

/// The `dataset` of a `control:` run's spec: it reads no data.
pub const CONTROL_DATASET: &str = "none";

/// Keys a `control:` model has no use for; a grid that sets one is refused
/// rather than silently ignored.
const NOT_FOR_CONTROLS: &[&str] = &[
    "dataset",
    "batch_size",
    "momentum",
    "weight_decay",
    "replacement",
    "test_fraction",
    "split_seed",
    "data_dir",
    "classes",
    "downsample",
    "normalize",
    "nesterov",
    "every_epochs",
    "at_epochs",
    "sketch_rank",
    "memory_mb",
    "shard_samples",
    "save_gradients",
    "keep_sketches",
    "digest_vectors",
    "projections",
    "basis",
    "basis_probe",
    "projection_seed",
    "block_size",
    "wire_precision",
    "exact",
    "epoch_psd_window",
];

/// Keys of what gradsweep computes from its own models, which a `python:`
/// trainer (whose gradients come from the user's code) has no use for; a
/// grid that sets one is refused rather than silently ignored.
const NOT_FOR_PYTHON: &[&str] = &["shard_samples", "block_size", "save_gradients", "exact", "epoch_psd_window"];

/// `k=v, k=v` for display.
pub fn fmt_params(params: &BTreeMap<String, serde_json::Value>) -> String {
    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: &str = r#"
[sweep]
name = "quickstart"
seeds = [0, 1]
[train]
model = "mlp:64-32-10"
dataset = "digits"
epochs = 30
[probe]
every_epochs = 10
sketch_rank = 64
[grid]
lr = { log = [0.02, 0.2], num = 4 }
batch_size = [8, 32, 128]
"#;

    fn err(text: &str) -> GridIssue {
        let e = parse_grid(text, "g.toml", GridLimits::default()).unwrap_err();
        e.issues[0].clone()
    }

    const CONTROL: &str = r#"
[sweep]
name = "double-well"
seeds = [0, 1]
[train]
model = "control:double-well"
epochs = 20
lr = 0.005
control_steps = 500
[probe]
burn_in_epochs = 2
max_lag = 16
[grid]
control_lambda = [0.0, 1.5]
"#;

    const PYTHON: &str = r#"
[sweep]
name = "torch-lenet"
seeds = 2
[train]
trainer = "python:examples.pytorch.train:main"
model = "small-lenet (torch)"
dataset = "mnist via torchvision"
epochs = 4
lr = 0.1
[probe]
every_epochs = 2
sketch_rank = 32
[user]
width = 16
activation = "relu"
layers = [8, 8]
[grid]
batch_size = [32, 128]
width = [16, 64]
"#;

    #[test]
    fn a_python_trainers_grid_carries_its_user_keys_and_leaves_model_and_data_to_it() {
        let p = parse_grid(PYTHON, "t.toml", GridLimits::default()).unwrap();
        assert_eq!(p.axes, vec!["batch_size", "width"]);
        assert_eq!(p.cells.len(), 4);
        let spec = p.cells[3].run_spec(1);
        let expected = Trainer::Python { module: "examples.pytorch.train".into(), function: "main".into() };
        assert_eq!(spec.train.trainer, expected);
        assert_eq!(spec.train.model, "small-lenet (torch)");
        assert_eq!(spec.user["width"], 64);
        assert_eq!(spec.user["activation"], "relu");
        assert_eq!(spec.user["layers"], serde_json::json!([8, 8]));
        assert_eq!(p.cells[3].params["width"], 64);
        // The spec travels as JSON and comes back the same.
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""trainer":"python:examples.pytorch.train:main""#), "{json}");
        assert_eq!(serde_json::from_str::<RunSpec>(&json).unwrap(), spec);
        // A built-in grid's specs and plan say nothing of trainers or user
        // keys: their fingerprints are what they were before either existed.
        let q = parse_grid(QUICK, "q.toml", GridLimits::default()).unwrap();
        let json = serde_json::to_string(&q.cells[0].run_spec(0)).unwrap() + &q.normalized_json();
        assert!(!json.contains("trainer") && !json.contains("user"), "{json}");
    }

    #[test]
    fn trainers_and_user_keys_are_checked_where_they_are_written() {
        let bad = |from: &str, to: &str| {
            assert!(PYTHON.contains(from), "{from}");
            err(&PYTHON.replace(from, to))
        };
        let e = bad("python:examples.pytorch.train:main", "pytorch:train");
        assert!(e.message.contains("unknown trainer") && e.line == 6, "{e}");
        let e = bad("python:examples.pytorch.train:main", "python:examples.pytorch.train");
        assert!(e.message.contains("needs a function"), "{e}");
        let e = bad("python:examples.pytorch.train:main", "python:examples/pytorch:main");
        assert!(e.message.contains("not a Python module path"), "{e}");
        // A [user] key may not shadow gradsweep's keys or the seed.
        let e = bad("width = 16", "lr = 16");
        assert!(e.message.contains("gradsweep's own key") && e.line == 15, "{e}");
        let e = bad("width = 16", "seed = 16");
        assert!(e.message.contains("`seed` is each run's own"), "{e}");
        // An axis over an undeclared key.
        let e = bad("width = 16\n", "");
        assert!(e.message.contains("unknown key `width` in [grid]") && e.message.contains("[user]"), "{e}");
        // What gradsweep computes from its own models does not apply.
        let e = bad("sketch_rank = 32", "sketch_rank = 32\nshard_samples = 100");
        assert!(e.message.contains("`shard_samples` does not apply to trainer") && e.line == 14, "{e}");
        let e = bad("sketch_rank = 32", "sketch_rank = 32\nbasis = \"eigen\"");
        assert!(e.message.contains("not available to python: trainers"), "{e}");
        let e = bad("model = \"small-lenet (torch)\"", "model = \"control:ou\"");
        assert!(e.message.contains("needs `trainer = \"builtin\"`"), "{e}");
        // [user] keys with the built-in engine would be ignored: refused.
        let e = bad("trainer = \"python:examples.pytorch.train:main\"", "trainer = \"builtin\"");
        assert!(e.message.contains("read by python: trainers only"), "{e}");
        let e = bad("activation = \"relu\"", "activation = 1979-05-27");
        assert!(e.message.contains("the date"), "{e}");
    }

    #[test]
    fn a_control_grid_expands_without_data_or_probes() {
        let p = parse_grid(CONTROL, "c.toml", GridLimits::default()).unwrap();
        assert_eq!(p.axes, vec!["control_lambda"]);
        assert_eq!(p.cells.len(), 2);
        let spec = p.cells[1].run_spec(0);
        assert!(spec.is_control());
        assert_eq!((spec.train.control_lambda, spec.train.control_steps), (1.5, 500));
        assert_eq!(spec.train.dataset, CONTROL_DATASET);
        assert!(spec.probe_epochs().is_empty());
        assert_eq!(crate::run::param_count(&spec).unwrap(), 2);
    }

    #[test]
    fn a_control_refuses_the_keys_it_would_ignore_and_networks_refuse_control_keys() {
        let e = err(&CONTROL.replace("max_lag = 16", "max_lag = 16\nsketch_rank = 64"));
        assert!(e.message.contains("`sketch_rank` does not apply to `control:double-well`"), "{}", e.message);
        assert_eq!(e.line, 13);
        let e = err(&CONTROL.replace("lr = 0.005", "lr = 0.005\nmomentum = 0.9"));
        assert!(e.message.contains("`momentum` does not apply"), "{}", e.message);
        let e = err(&CONTROL.replace("control:double-well", "control:triple-well"));
        assert!(e.message.contains("control:triple-well") && e.message.contains("control:ou"), "{}", e.message);
        let e = err(&QUICK.replace("epochs = 30", "epochs = 30\ncontrol_lambda = 1.0"));
        assert!(e.message.contains("`control_lambda` applies only to `control:` models"), "{}", e.message);
        let e = err(&CONTROL.replace("[0.0, 1.5]", "[0.0, \"x\"]"));
        assert!(e.message.contains("a finite number"), "{}", e.message);
    }

    /// Issue 15: per-epoch recording is a probe key with its own checks.
    #[test]
    fn epoch_recording_needs_a_valid_window_and_more_epochs_than_one() {
        let ok = parse_grid(
            &QUICK.replace("sketch_rank = 64", "sketch_rank = 64\nepoch_psd_window = 16"),
            "q",
            GridLimits::default(),
        )
        .expect("a 16-epoch window in a 30-epoch run");
        assert_eq!(ok.cells[0].probe.epoch_psd_window, 16);
        let e = err(&QUICK.replace("sketch_rank = 64", "sketch_rank = 64\nepoch_psd_window = 12"));
        assert!(e.message.contains("`epoch_psd_window` must be 0 or a power of two"), "{}", e.message);
        assert_eq!(e.line, 12);
        let e = err(&QUICK.replace("sketch_rank = 64", "sketch_rank = 64\nburn_in_epochs = 20\nepoch_psd_window = 16"));
        assert!(e.message.contains("needs more recorded epochs than one window: the run records 10"), "{}", e.message);
        let e = err(&CONTROL.replace("max_lag = 16", "max_lag = 16\nepoch_psd_window = 16"));
        assert!(e.message.contains("`epoch_psd_window` does not apply to `control:double-well`"), "{}", e.message);
        // Left out of a spec at 0, so grids without it keep their fingerprints.
        assert!(!serde_json::to_string(&crate::spec::ProbeConfig::default()).unwrap().contains("epoch_psd_window"));
    }

    #[test]
    fn quickstart_expands() {
        let p = parse_grid(QUICK, "q.toml", GridLimits::default()).unwrap();
        assert_eq!(p.cells.len(), 12);
        assert_eq!(p.run_count(), 24);
        assert_eq!(p.axes, vec!["lr", "batch_size"]);
        assert!((p.cells[0].train.lr - 0.02).abs() < 1e-12);
        assert!((p.cells[11].train.lr - 0.2).abs() < 1e-12);
        assert_eq!(p.cells[1].train.batch_size, 32);
        assert_eq!(p.cells[0].train.epochs, 30);
    }

    #[test]
    fn fingerprint_ignores_formatting() {
        let a = parse_grid(QUICK, "a", GridLimits::default()).unwrap();
        let reformatted = QUICK.replace("epochs = 30", "epochs=30 # thirty").replace("[probe]\n", "[probe]\n# probe\n");
        let b = parse_grid(&reformatted, "b", GridLimits::default()).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = parse_grid(&QUICK.replace("epochs = 30", "epochs = 31"), "c", GridLimits::default()).unwrap();
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = err(&QUICK.replace("epochs = 30", "epochs = 30\nepoch = 3"));
        assert_eq!((e.line, e.col), (9, 1), "{e}");
        assert!(e.message.contains("unknown key `epoch`") && e.message.ends_with("did you mean `epochs`?"), "{e}");

        let e = err(&QUICK.replace("epochs = 30", "epochs = \"thirty\""));
        assert_eq!((e.line, e.col), (8, 10), "{e}");
        assert!(e.message.contains("integer"), "{e}");

        let e = err(&QUICK.replace("lr = { log = [0.02, 0.2], num = 4 }", "lr = [0.1, -0.5]"));
        assert_eq!(e.line, 13);
        assert!(e.message.contains("`lr` must be a number > 0"), "{e}");

        let e = err(&QUICK.replace("batch_size = [8, 32, 128]", "batch_size = [0, 8]"));
        assert!(e.message.contains("`batch_size` must be ≥ 1"), "{e}");

        let e = err(&QUICK.replace("batch_size = [8, 32, 128]", "batch_size = [8, 5000]"));
        assert!(e.message.contains("larger than the training set"), "{e}");
        assert_eq!((e.line, e.col), (14, 14));

        let e = err(&QUICK.replace("batch_size = [8, 32, 128]", "batch_size = []"));
        assert!(e.message.contains("empty"), "{e}");

        let e =
            err(&QUICK
                .replace("batch_size = [8, 32, 128]", "[[grid.zip]]\nmomentum = [0.0, 0.9]\nweight_decay = [0.0]"));
        assert!(e.message.contains("equal lengths"), "{e}");

        let e = parse_grid(QUICK, "g.toml", GridLimits { max_runs: 10 }).unwrap_err().issues[0].clone();
        assert!(e.message.contains("24 runs, more than the limit of 10"), "{e}");

        let e = err("[sweep\nname='x'");
        assert_eq!(e.line, 1);
        assert_eq!(e.to_string().split(':').next(), Some("g.toml"));
    }

    /// docs/grid.md is what `gradsweep keys --markdown` prints: regenerate
    /// it with `cargo run --bin gradsweep -- keys --markdown > docs/grid.md`.
    #[test]
    fn the_grid_reference_in_docs_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grid.md");
        let file = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            file == grid_reference_markdown(),
            "docs/grid.md is stale: run `cargo run --bin gradsweep -- keys --markdown > docs/grid.md`"
        );
        let keys = key_reference();
        assert_eq!(keys.len(), KEYS.len());
        let get = |n: &str| keys.iter().find(|k| k.name == n).unwrap().clone();
        assert_eq!((get("lr").default.as_str(), get("lr").section), ("0.1", "train"));
        assert_eq!(get("sketch_rank").default, "\"auto\"");
        assert_eq!(get("keep_sketches").default, "false");
        assert!(keys.iter().all(|k| !k.meaning.is_empty() && !k.values.is_empty()));
        assert!(keys.iter().all(|k| k.default != "none"), "every key states its default");
    }

    /// One schema: every field of the typed configuration is a declared
    /// key of its section, and every declared key a field — a field added
    /// without its declaration (type, limits, meaning) fails here.
    #[test]
    fn every_configuration_field_is_a_declared_key_and_back() {
        let fields = |v: serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
        let mut probe = fields(serde_json::to_value(ProbeConfig::default()).unwrap());
        // Fields left out of the serialised spec at their defaults.
        let p = ProbeConfig {
            memory_mb: 1,
            shard_samples: 1,
            save_gradients: 1,
            keep_sketches: true,
            digest_vectors: 1,
            at_epochs: vec![1],
            epoch_psd_window: 8,
            ..ProbeConfig::default()
        };
        probe.extend(fields(serde_json::to_value(p).unwrap()));
        probe.sort();
        probe.dedup();
        let mut train = fields(serde_json::to_value(TrainConfig::default()).unwrap());
        let t = TrainConfig {
            control_lambda: 1.0,
            control_steps: 1,
            trainer: Trainer::Python { module: "m".into(), function: "f".into() },
            ..TrainConfig::default()
        };
        train.extend(fields(serde_json::to_value(t).unwrap()));
        train.sort();
        train.dedup();
        for (section, fields) in [(Section::Train, train), (Section::Probe, probe)] {
            let mut declared: Vec<String> =
                KEYS.iter().filter(|k| k.section == section).map(|k| k.name.to_string()).collect();
            declared.sort();
            let mut fields = fields;
            fields.sort();
            assert_eq!(fields, declared, "[{}]: fields and declared keys differ", section_name(section));
        }
    }

    #[test]
    fn an_unknown_key_suggests_the_key_it_most_likely_means() {
        assert_eq!(did_you_mean("learning_rate"), "; did you mean `lr`?");
        assert_eq!(did_you_mean("btach_size"), "; did you mean `batch_size`?");
        assert_eq!(did_you_mean("Momentum"), "; did you mean `momentum`?");
        assert_eq!(did_you_mean("colour"), "");
        for (alias, key) in KEY_ALIASES {
            assert!(key_def(key).is_some(), "alias `{alias}` names `{key}`, which is not a key");
        }
        let e =
            parse_grid(&QUICK.replace("[grid]\n", "[grid]\nlearning_rate = [0.1]\n"), "g.toml", GridLimits::default())
                .unwrap_err();
        assert!(
            e.to_string().contains("unknown key `learning_rate` in [grid]") && e.to_string().contains("`lr`?"),
            "{e}"
        );
    }

    /// Issue 13: `epochs = [5000000000, 20]` fits the key's integer check
    /// but not the field; it used to drop its cell silently ("1 cell").
    #[test]
    fn a_value_too_large_for_its_field_is_an_error_at_its_place_not_a_dropped_cell() {
        let text = QUICK.replace("batch_size = [8, 32, 128]", "batch_size = [8]\nepochs = [5000000000, 20]");
        let e = parse_grid(&text, "g.toml", GridLimits::default()).unwrap_err();
        let i = e.issues.iter().find(|i| i.message.contains("`epochs` = 5000000000 does not fit")).expect("named");
        let line = text.lines().position(|l| l.starts_with("epochs = [5000000000")).unwrap() + 1;
        assert_eq!((i.line, i.col), (line, 10), "the axis's values: {e}");
        let text = QUICK.replace("batch_size = [8, 32, 128]", "batch_size = [8]\nepochs = [30, 20]");
        assert_eq!(parse_grid(&text, "g.toml", GridLimits::default()).unwrap().cells.len(), 8);
    }

    /// Issue 12: the queue order is the grid's; left at its default it
    /// leaves the plan (and its fingerprint) as it was before the key.
    #[test]
    fn the_queue_order_is_read_checked_at_its_place_and_kept_out_of_a_default_plan() {
        let plan = parse_grid(QUICK, "g.toml", GridLimits::default()).unwrap();
        assert_eq!(plan.order, QueueOrder::Cells);
        assert!(!plan.normalized_json().contains("order"), "a default plan's JSON is unchanged");
        let explicit = QUICK.replace("name = \"quickstart\"", "name = \"quickstart\"\norder = \"cells\"");
        assert_eq!(parse_grid(&explicit, "g.toml", GridLimits::default()).unwrap().fingerprint(), plan.fingerprint());
        let seeds = QUICK.replace("name = \"quickstart\"", "name = \"quickstart\"\norder = \"seeds\"");
        let by_seed = parse_grid(&seeds, "g.toml", GridLimits::default()).unwrap();
        assert_eq!(by_seed.order, QueueOrder::Seeds);
        assert_eq!(by_seed.cells, plan.cells, "the same runs");
        let bad = QUICK.replace("name = \"quickstart\"", "name = \"quickstart\"\norder = \"random\"");
        let e = parse_grid(&bad, "g.toml", GridLimits::default()).unwrap_err().issues[0].clone();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("`order` must be \"cells\" or \"seeds\""), "{e}");
        assert_eq!(QueueOrder::Cells.position(1, 0, 3, 2), 2);
        assert_eq!(QueueOrder::Seeds.position(1, 0, 3, 2), 1);
    }

    /// Issue 13: a sweep's name becomes `gradsweep-out/<name>`, so a name
    /// that would lead anywhere else is refused where it is written.
    #[test]
    fn a_sweep_name_that_would_leave_the_output_folder_is_refused_at_its_line() {
        for bad in ["../../escaped", "a/b", "..", ".", "a\\\\b", "tab\there"] {
            let text = QUICK.replace("name = \"quickstart\"", &format!("name = \"{bad}\""));
            let e = parse_grid(&text, "g.toml", GridLimits::default()).unwrap_err().issues[0].clone();
            assert_eq!((e.line, e.message.contains("output folder")), (3, true), "{bad}: {e}");
        }
        let long = QUICK.replace("name = \"quickstart\"", &format!("name = \"{}\"", "n".repeat(201)));
        assert!(parse_grid(&long, "g.toml", GridLimits::default()).is_err());
        for good in ["quickstart", "lenet η/b".replace('/', " over ").as_str(), "a.b-c_d", "..x"] {
            let text = QUICK.replace("name = \"quickstart\"", &format!("name = \"{good}\""));
            assert!(parse_grid(&text, "g.toml", GridLimits::default()).is_ok(), "{good}");
        }
    }

    #[test]
    fn zip_pairs_values() {
        let t = QUICK
            .replace("batch_size = [8, 32, 128]", "[[grid.zip]]\nmomentum = [0.0, 0.9]\nweight_decay = [0.0, 0.001]");
        let p = parse_grid(&t, "z", GridLimits::default()).unwrap();
        assert_eq!(p.cells.len(), 8);
        assert_eq!(p.cells[1].train.momentum, 0.9);
        assert_eq!(p.cells[1].train.weight_decay, 0.001);
        assert_eq!(p.cells[0].train.weight_decay, 0.0);
    }
}
