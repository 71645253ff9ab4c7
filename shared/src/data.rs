//! Data sets: files in the IDX format (MNIST, Fashion-MNIST; raw or
//! gzipped), the CIFAR-10 binary format, CSV (label first), the bundled 8×8
//! digits, and a synthetic teacher–student set — plus the options a grid
//! file can apply: a class subset, 4×4 average-pool down-sampling (the
//! paper's 7×7 MNIST), per-channel normalisation and the train/test split.
//!
//! A data set is loaded whole into memory as f32 features (row-major, each
//! sample `C × H × W`) and `u32` labels. Every malformed file is a
//! [`DataError`] naming the file and what is wrong.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nn::Shape;
use crate::rng::{Rng, Stream};

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Errors while naming, reading or checking a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data set name is not one gradsweep knows.
    #[error(
        "unknown dataset `{0}` (known: digits, teacher[:DIM-CLASSES-SAMPLES], mnist, fashion-mnist, cifar10, csv:PATH)"
    )]
    Unknown(String),
    /// A file could not be read or is malformed.
    #[error("{}: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// An option does not fit the data.
    #[error("dataset `{dataset}`: {message}")]
    Option {
        /// The data set.
        dataset: String,
        /// What is wrong.
        message: String,
    },
}

fn malformed(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Malformed { path: path.to_path_buf(), message: message.into() }
}

/// Shape of a data set, known without loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Shape of one sample.
    pub shape: Shape,
    /// Number of classes.
    pub classes: usize,
    /// Training samples (before a class subset), if known without reading files.
    pub train_samples: Option<usize>,
}

/// Which data set, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetName {
    /// The bundled 8×8 digits (1,797 samples, 64 features scaled to [0, 1], 10 classes).
    Digits,
    /// Gaussian inputs labelled by a random linear teacher: `teacher:DIM-CLASSES-SAMPLES`.
    Teacher {
        /// Input dimension.
        dim: usize,
        /// Number of classes.
        classes: usize,
        /// Number of samples.
        samples: usize,
    },
    /// MNIST in `<data_dir>/mnist` (official 60k/10k split).
    Mnist,
    /// Fashion-MNIST in `<data_dir>/fashion-mnist` (official 60k/10k split).
    FashionMnist,
    /// CIFAR-10 binary batches in `<data_dir>/cifar-10-batches-bin` (50k/10k).
    Cifar10,
    /// A CSV file, one sample per line: the label, then the features.
    Csv(PathBuf),
}

impl DatasetName {
    /// Parses a dataset name as written in a grid file.
    pub fn parse(name: &str) -> Result<Self, DataError> {
        match name {
            "digits" => return Ok(DatasetName::Digits),
            "teacher" => return Ok(DatasetName::Teacher { dim: 32, classes: 4, samples: 2000 }),
            "mnist" => return Ok(DatasetName::Mnist),
            "fashion-mnist" => return Ok(DatasetName::FashionMnist),
            "cifar10" => return Ok(DatasetName::Cifar10),
            _ => {}
        }
        if let Some(p) = name.strip_prefix("csv:").filter(|p| !p.is_empty()) {
            return Ok(DatasetName::Csv(PathBuf::from(p)));
        }
        let rest = name.strip_prefix("teacher:").ok_or_else(|| DataError::Unknown(name.to_string()))?;
        let parts: Vec<usize> = rest
            .split('-')
            .map(|p| p.parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| DataError::Unknown(name.to_string()))?;
        match parts[..] {
            [dim, classes, samples] if dim > 0 && classes >= 2 && samples >= 2 => {
                Ok(DatasetName::Teacher { dim, classes, samples })
            }
            _ => Err(DataError::Unknown(name.to_string())),
        }
    }

    /// The data set's shape as stored (before options).
    pub fn info(&self) -> DatasetInfo {
        let img = |c, h, w| Shape { c, h, w };
        match self {
            DatasetName::Digits => DatasetInfo { shape: img(1, 8, 8), classes: 10, train_samples: Some(1797) },
            DatasetName::Teacher { dim, classes, samples } => {
                DatasetInfo { shape: Shape::flat(*dim), classes: *classes, train_samples: Some(*samples) }
            }
            DatasetName::Mnist | DatasetName::FashionMnist => {
                DatasetInfo { shape: img(1, 28, 28), classes: 10, train_samples: Some(60_000) }
            }
            DatasetName::Cifar10 => DatasetInfo { shape: img(3, 32, 32), classes: 10, train_samples: Some(50_000) },
            DatasetName::Csv(_) => DatasetInfo { shape: Shape::flat(0), classes: 0, train_samples: None },
        }
    }

    /// True when the data set comes with its own test set.
    pub fn has_official_split(&self) -> bool {
        matches!(self, DatasetName::Mnist | DatasetName::FashionMnist | DatasetName::Cifar10)
    }
}

/// Options applied to a data set after loading (grid keys of `[train]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DataOptions {
    /// Folder holding file-based data sets.
    pub data_dir: String,
    /// Keep only these classes, relabelled 0..k in the order given (empty: all).
    pub classes: Vec<u32>,
    /// Average-pool factor applied to images (1: none; 4 turns 28×28 into 7×7).
    pub downsample: u32,
    /// Subtract each channel's training mean and divide by its standard deviation.
    pub normalize: bool,
    /// Fraction held out for testing (data sets without an official split).
    pub test_fraction: f64,
    /// Seed of the split (and of synthetic data).
    pub split_seed: u64,
}

impl DataOptions {
    /// Shape and class count after the options, when knowable without files.
    pub fn apply_to_info(&self, info: DatasetInfo) -> Result<DatasetInfo, String> {
        let mut out = info;
        if self.downsample > 1 {
            let f = self.downsample as usize;
            if info.shape.h == 1 && info.shape.w == 1 {
                return Err("`downsample` needs an image data set".into());
            }
            if !info.shape.h.is_multiple_of(f) || !info.shape.w.is_multiple_of(f) {
                return Err(format!(
                    "`downsample` {f} does not divide the image size {}x{}",
                    info.shape.h, info.shape.w
                ));
            }
            out.shape = Shape { c: info.shape.c, h: info.shape.h / f, w: info.shape.w / f };
        }
        if !self.classes.is_empty() {
            if let Some(&bad) = self.classes.iter().find(|&&c| info.classes > 0 && c as usize >= info.classes) {
                return Err(format!("class {bad} does not exist (the data set has {} classes)", info.classes));
            }
            let mut s = self.classes.clone();
            s.sort_unstable();
            s.dedup();
            if s.len() != self.classes.len() || s.len() < 2 {
                return Err("`classes` must list at least two distinct classes".into());
            }
            out.classes = self.classes.len();
            out.train_samples = None;
        }
        Ok(out)
    }
}

/// Samples in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Shape of one sample.
    pub shape: Shape,
    /// Features per sample (`shape.size()`).
    pub dim: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Row-major `len × dim` features.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<u32>,
}

impl Dataset {
    fn new(shape: Shape, classes: usize, x: Vec<f32>, y: Vec<u32>) -> Self {
        Dataset { shape, dim: shape.size(), classes, x, y }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Copies the samples at `idx` into contiguous buffers.
    pub fn gather(&self, idx: &[usize], x: &mut Vec<f32>, y: &mut Vec<u32>) {
        x.clear();
        y.clear();
        for &i in idx {
            x.extend_from_slice(&self.x[i * self.dim..(i + 1) * self.dim]);
            y.push(self.y[i]);
        }
    }

    fn subset(&self, idx: &[usize]) -> Dataset {
        let mut x = Vec::new();
        let mut y = Vec::new();
        self.gather(idx, &mut x, &mut y);
        Dataset::new(self.shape, self.classes, x, y)
    }

    fn keep_classes(&self, classes: &[u32]) -> Dataset {
        let idx: Vec<usize> = (0..self.len()).filter(|&i| classes.contains(&self.y[i])).collect();
        let mut d = self.subset(&idx);
        for l in &mut d.y {
            *l = classes.iter().position(|c| c == l).unwrap_or(0) as u32;
        }
        d.classes = classes.len();
        d
    }

    fn downsample(&self, f: usize) -> Dataset {
        let (c, h, w) = (self.shape.c, self.shape.h, self.shape.w);
        let s = Shape { c, h: h / f, w: w / f };
        let mut x = Vec::with_capacity(self.len() * s.size());
        let inv = 1.0 / (f * f) as f32;
        for img in self.x.chunks_exact(self.dim) {
            for ch in 0..c {
                for oy in 0..s.h {
                    for ox in 0..s.w {
                        let mut acc = 0.0;
                        for dy in 0..f {
                            let row = &img[ch * h * w + (oy * f + dy) * w + ox * f..][..f];
                            acc += row.iter().sum::<f32>();
                        }
                        x.push(acc * inv);
                    }
                }
            }
        }
        Dataset::new(s, self.classes, x, self.y.clone())
    }

    /// Per-channel mean and standard deviation.
    fn channel_stats(&self) -> Vec<(f32, f32)> {
        let l = self.shape.h * self.shape.w;
        (0..self.shape.c)
            .map(|ch| {
                let (mut s, mut sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
                for img in self.x.chunks_exact(self.dim) {
                    for &v in &img[ch * l..(ch + 1) * l] {
                        s += v as f64;
                        sq += (v as f64) * (v as f64);
                        n += 1.0;
                    }
                }
                let m = s / n.max(1.0);
                let sd = (sq / n.max(1.0) - m * m).max(0.0).sqrt();
                (m as f32, if sd > 1e-12 { sd as f32 } else { 1.0 })
            })
            .collect()
    }

    fn normalize_with(&mut self, stats: &[(f32, f32)]) {
        let l = self.shape.h * self.shape.w;
        let dim = self.dim;
        for img in self.x.chunks_exact_mut(dim) {
            for (ch, (m, s)) in stats.iter().enumerate() {
                img[ch * l..(ch + 1) * l].iter_mut().for_each(|v| *v = (*v - m) / s);
            }
        }
    }
}

/// A train/test pair.
#[derive(Debug, Clone)]
pub struct Split {
    /// Samples SGD trains on and D(x) is computed over.
    pub train: Dataset,
    /// Held-out samples for accuracy.
    pub test: Dataset,
}

/// Loads `name`, splits it and applies the options.
pub fn load_split(name: &DatasetName, opts: &DataOptions) -> Result<Split, DataError> {
    let dir = Path::new(&opts.data_dir);
    let (mut train, mut test) = match name {
        DatasetName::Digits => split(parse_digits_csv(DIGITS_CSV_GZ)?, opts),
        DatasetName::Teacher { dim, classes, samples } => {
            split(teacher(*dim, *classes, *samples, opts.split_seed), opts)
        }
        DatasetName::Mnist | DatasetName::FashionMnist => {
            let sub = dir.join(if *name == DatasetName::Mnist { "mnist" } else { "fashion-mnist" });
            (
                load_idx_pair(&sub, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
                load_idx_pair(&sub, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
            )
        }
        DatasetName::Cifar10 => {
            let sub = dir.join("cifar-10-batches-bin");
            let mut parts = vec![];
            for i in 1..=5 {
                parts.push(load_cifar(&sub.join(format!("data_batch_{i}.bin")))?);
            }
            let train = concat(parts);
            (train, load_cifar(&sub.join("test_batch.bin"))?)
        }
        DatasetName::Csv(path) => split(load_csv(path)?, opts),
    };
    opts.apply_to_info(DatasetInfo { shape: train.shape, classes: train.classes, train_samples: None })
        .map_err(|message| DataError::Option { dataset: format!("{name:?}"), message })?;
    if !opts.classes.is_empty() {
        train = train.keep_classes(&opts.classes);
        test = test.keep_classes(&opts.classes);
    }
    if opts.downsample > 1 {
        train = train.downsample(opts.downsample as usize);
        test = test.downsample(opts.downsample as usize);
    }
    if opts.normalize {
        let stats = train.channel_stats();
        train.normalize_with(&stats);
        test.normalize_with(&stats);
    }
    if train.len() < 2 {
        return Err(DataError::Option {
            dataset: format!("{name:?}"),
            message: format!("only {} training samples", train.len()),
        });
    }
    Ok(Split { train, test })
}

fn split(all: Dataset, opts: &DataOptions) -> (Dataset, Dataset) {
    let mut rng = Rng::new(opts.split_seed, Stream::Data);
    let mut idx: Vec<usize> = (0..all.len()).collect();
    rng.shuffle(&mut idx);
    let n_test = ((all.len() as f64) * opts.test_fraction).round() as usize;
    let (test_idx, train_idx) = idx.split_at(n_test.min(all.len().saturating_sub(1)));
    let mut train_idx = train_idx.to_vec();
    let mut test_idx = test_idx.to_vec();
    train_idx.sort_unstable();
    test_idx.sort_unstable();
    (all.subset(&train_idx), all.subset(&test_idx))
}

fn concat(parts: Vec<Dataset>) -> Dataset {
    let mut it = parts.into_iter();
    let mut first = it.next().expect("at least one part");
    for p in it {
        first.x.extend(p.x);
        first.y.extend(p.y);
    }
    first
}

/// Reads a file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| malformed(path, format!("cannot read: {e}")))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| malformed(path, format!("corrupt gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    for cand in [dir.join(stem), dir.join(format!("{stem}.gz"))] {
        if cand.exists() {
            return Ok(cand);
        }
    }
    Err(malformed(&dir.join(stem), "not found (nor .gz); run deploy/fetch-data.sh or set data_dir"))
}

fn load_idx_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset, DataError> {
    let (ip, lp) = (find(dir, images)?, find(dir, labels)?);
    let (shape, x) = parse_idx_images(&read_maybe_gz(&ip)?, &ip)?;
    let y = parse_idx_labels(&read_maybe_gz(&lp)?, &lp, 10)?;
    if x.len() / shape.size() != y.len() {
        return Err(malformed(
            &lp,
            format!("{} labels but {} has {} images", y.len(), ip.display(), x.len() / shape.size()),
        ));
    }
    Ok(Dataset::new(shape, 10, x, y))
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX3 image file (magic 0x00000803, u8 pixels) into [0, 1] floats.
pub fn parse_idx_images(b: &[u8], path: &Path) -> Result<(Shape, Vec<f32>), DataError> {
    if b.len() < 16 {
        return Err(malformed(path, format!("truncated IDX header ({} bytes, need 16)", b.len())));
    }
    let magic = be_u32(b, 0);
    if magic != 0x0803 {
        return Err(malformed(path, format!("wrong magic number 0x{magic:08x} for IDX images (expected 0x00000803)")));
    }
    let (n, h, w) = (be_u32(b, 4) as usize, be_u32(b, 8) as usize, be_u32(b, 12) as usize);
    let need =
        n.checked_mul(h * w).and_then(|v| v.checked_add(16)).ok_or_else(|| malformed(path, "absurd header sizes"))?;
    if b.len() != need {
        return Err(malformed(
            path,
            format!(
                "{} bytes but the header ({n} images of {h}x{w}) needs {need}{}",
                b.len(),
                if b.len() < need { " (truncated)" } else { "" }
            ),
        ));
    }
    Ok((Shape { c: 1, h, w }, b[16..].iter().map(|&p| p as f32 / 255.0).collect()))
}

/// Parses an IDX1 label file (magic 0x00000801) with labels below `classes`.
pub fn parse_idx_labels(b: &[u8], path: &Path, classes: u32) -> Result<Vec<u32>, DataError> {
    if b.len() < 8 {
        return Err(malformed(path, format!("truncated IDX header ({} bytes, need 8)", b.len())));
    }
    let magic = be_u32(b, 0);
    if magic != 0x0801 {
        return Err(malformed(path, format!("wrong magic number 0x{magic:08x} for IDX labels (expected 0x00000801)")));
    }
    let n = be_u32(b, 4) as usize;
    if b.len() != 8 + n {
        return Err(malformed(path, format!("{} bytes but the header ({n} labels) needs {}", b.len(), 8 + n)));
    }
    b[8..]
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if (l as u32) < classes {
                Ok(l as u32)
            } else {
                Err(malformed(path, format!("label {l} of sample {i} is out of range 0..{classes}")))
            }
        })
        .collect()
}

/// Parses one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes.
pub fn load_cifar(path: &Path) -> Result<Dataset, DataError> {
    let b = read_maybe_gz(path)?;
    const REC: usize = 1 + 3 * 32 * 32;
    if b.is_empty() || b.len() % REC != 0 {
        return Err(malformed(path, format!("{} bytes is not a whole number of {REC}-byte CIFAR-10 records", b.len())));
    }
    let n = b.len() / REC;
    let mut x = Vec::with_capacity(n * (REC - 1));
    let mut y = Vec::with_capacity(n);
    for (i, rec) in b.chunks_exact(REC).enumerate() {
        if rec[0] >= 10 {
            return Err(malformed(path, format!("label {} of record {i} is out of range 0..10", rec[0])));
        }
        y.push(rec[0] as u32);
        x.extend(rec[1..].iter().map(|&p| p as f32 / 255.0));
    }
    Ok(Dataset::new(Shape { c: 3, h: 32, w: 32 }, 10, x, y))
}

/// Parses a CSV file: one sample per line, the integer label first, then the
/// features. Classes are `max label + 1`.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    let bytes = read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|_| malformed(path, "not UTF-8 text"))?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut dim = None;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let lineno = i + 1;
        let label: u32 = fields[0].parse().map_err(|_| {
            malformed(path, format!("line {lineno}: label `{}` is not a non-negative integer", fields[0]))
        })?;
        let feats = fields.len() - 1;
        match dim {
            None if feats == 0 => return Err(malformed(path, format!("line {lineno}: no features after the label"))),
            None => dim = Some(feats),
            Some(d) if d != feats => {
                return Err(malformed(path, format!("line {lineno}: {feats} features, earlier lines have {d}")));
            }
            _ => {}
        }
        for (j, f) in fields[1..].iter().enumerate() {
            let v: f32 = f
                .parse()
                .map_err(|_| malformed(path, format!("line {lineno}, field {}: `{f}` is not a number", j + 2)))?;
            if !v.is_finite() {
                return Err(malformed(path, format!("line {lineno}, field {}: non-finite value", j + 2)));
            }
            x.push(v);
        }
        y.push(label);
    }
    let dim = dim.ok_or_else(|| malformed(path, "no samples"))?;
    let classes = y.iter().copied().max().unwrap_or(0) as usize + 1;
    Ok(Dataset::new(Shape::flat(dim), classes.max(2), x, y))
}

/// Parses the bundled digits: 64 pixel values (0..16), then the label.
fn parse_digits_csv(gz: &[u8]) -> Result<Dataset, DataError> {
    let path = Path::new("<bundled digits.csv.gz>");
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| malformed(path, format!("cannot decompress: {e}")))?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (lineno, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(malformed(path, format!("line {}: expected 65 fields, found {}", lineno + 1, fields.len())));
        }
        for f in &fields[..64] {
            let v: f32 =
                f.trim().parse().map_err(|_| malformed(path, format!("line {}: `{f}` is not a number", lineno + 1)))?;
            x.push(v / 16.0);
        }
        let label: u32 =
            fields[64].trim().parse().map_err(|_| malformed(path, format!("line {}: bad label", lineno + 1)))?;
        if label >= 10 {
            return Err(malformed(path, format!("line {}: label {label} out of range 0..10", lineno + 1)));
        }
        y.push(label);
    }
    Ok(Dataset::new(Shape { c: 1, h: 8, w: 8 }, 10, x, y))
}

/// Gaussian inputs labelled by the argmax of a random linear teacher.
fn teacher(dim: usize, classes: usize, samples: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed, Stream::Other(0x7EAC));
    let w: Vec<f64> = (0..classes * dim).map(|_| rng.normal()).collect();
    let mut x = Vec::with_capacity(samples * dim);
    let mut y = Vec::with_capacity(samples);
    for _ in 0..samples {
        let row: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let mut best = (f64::NEG_INFINITY, 0u32);
        for c in 0..classes {
            let s: f64 = (0..dim).map(|j| w[c * dim + j] * row[j]).sum();
            if s > best.0 {
                best = (s, c as u32);
            }
        }
        x.extend(row.iter().map(|&v| v as f32));
        y.push(best.1);
    }
    Dataset::new(Shape::flat(dim), classes, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> DataOptions {
        DataOptions { data_dir: "data".into(), downsample: 1, test_fraction: 0.2, ..Default::default() }
    }

    #[test]
    fn digits_load_with_known_counts() {
        let s = load_split(&DatasetName::Digits, &opts()).unwrap();
        assert_eq!(s.train.len() + s.test.len(), 1797);
        assert_eq!(s.test.len(), 359);
        let mut counts = [0usize; 10];
        for &l in s.train.y.iter().chain(&s.test.y) {
            counts[l as usize] += 1;
        }
        // Class counts of the UCI test set as shipped by scikit-learn.
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        assert!(s.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn split_is_deterministic_and_seed_dependent() {
        let a = load_split(&DatasetName::Digits, &opts()).unwrap();
        let b = load_split(&DatasetName::Digits, &opts()).unwrap();
        let c = load_split(&DatasetName::Digits, &DataOptions { split_seed: 1, ..opts() }).unwrap();
        assert_eq!(a.train, b.train);
        assert_ne!(a.train.y, c.train.y);
    }

    #[test]
    fn options_subset_downsample_normalize() {
        let o = DataOptions { classes: vec![3, 1], downsample: 2, normalize: true, ..opts() };
        let s = load_split(&DatasetName::Digits, &o).unwrap();
        assert_eq!(s.train.classes, 2);
        assert_eq!(s.train.shape, Shape { c: 1, h: 4, w: 4 });
        assert!(s.train.y.iter().all(|&l| l < 2));
        assert_eq!(s.train.len() + s.test.len(), 183 + 182);
        let mean: f64 = s.train.x.iter().map(|&v| v as f64).sum::<f64>() / s.train.x.len() as f64;
        assert!(mean.abs() < 1e-4, "{mean}");
        assert!(o.apply_to_info(DatasetName::Digits.info()).is_ok());
        let bad = DataOptions { downsample: 3, ..opts() };
        assert!(bad.apply_to_info(DatasetName::Digits.info()).unwrap_err().contains("does not divide"));
        let bad = DataOptions { classes: vec![1, 12], ..opts() };
        assert!(bad.apply_to_info(DatasetName::Digits.info()).unwrap_err().contains("class 12"));
    }

    #[test]
    fn downsample_averages_blocks() {
        let d = Dataset::new(Shape { c: 1, h: 2, w: 4 }, 2, vec![1., 2., 3., 4., 5., 6., 7., 8.], vec![0]);
        let s = d.downsample(2);
        assert_eq!(s.x, vec![3.5, 5.5]);
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn idx_images(n: u32, h: u32, w: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for v in [n, h, w] {
            b.extend(v.to_be_bytes());
        }
        b.extend((0..n * h * w).map(|i| (i % 256) as u8));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend(labels);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn idx_files_load_raw_and_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("mnist");
        std::fs::create_dir(&m).unwrap();
        write(&m, "train-images-idx3-ubyte.gz", &gz(&idx_images(3, 28, 28)));
        write(&m, "train-labels-idx1-ubyte", &idx_labels(&[1, 2, 3]));
        write(&m, "t10k-images-idx3-ubyte", &idx_images(2, 28, 28));
        write(&m, "t10k-labels-idx1-ubyte.gz", &gz(&idx_labels(&[4, 5])));
        let o = DataOptions { data_dir: dir.path().display().to_string(), ..opts() };
        let s = load_split(&DatasetName::Mnist, &o).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (3, 2));
        assert_eq!(s.train.shape, Shape { c: 1, h: 28, w: 28 });
        assert_eq!(s.test.y, vec![4, 5]);
        let small = load_split(&DatasetName::Mnist, &DataOptions { downsample: 4, ..o }).unwrap();
        assert_eq!(small.train.shape, Shape { c: 1, h: 7, w: 7 });
    }

    #[test]
    fn malformed_files_name_file_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let check = |r: Result<Dataset, DataError>, file: &str, words: &str| {
            let e = r.unwrap_err().to_string();
            assert!(e.contains(file) && e.contains(words), "expected `{file}` and `{words}` in: {e}");
        };
        let load_pair = |img: &[u8], lab: &[u8]| {
            let sub = d.join("mnist");
            let _ = std::fs::create_dir(&sub);
            for f in std::fs::read_dir(&sub).unwrap() {
                std::fs::remove_file(f.unwrap().path()).unwrap();
            }
            write(&sub, "train-images-idx3-ubyte", img);
            write(&sub, "train-labels-idx1-ubyte", lab);
            load_idx_pair(&sub, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
        };
        let mut bad_magic = idx_images(2, 4, 4);
        bad_magic[3] = 9;
        check(load_pair(&bad_magic, &idx_labels(&[0, 1])), "train-images-idx3-ubyte", "wrong magic number");
        let mut truncated = idx_images(2, 4, 4);
        truncated.truncate(30);
        check(load_pair(&truncated, &idx_labels(&[0, 1])), "train-images-idx3-ubyte", "truncated");
        check(load_pair(&idx_images(2, 4, 4), &idx_labels(&[0, 1, 2])), "train-labels-idx1-ubyte", "3 labels but");
        check(
            load_pair(&idx_images(2, 4, 4), &idx_labels(&[0, 11])),
            "train-labels-idx1-ubyte",
            "label 11 of sample 1",
        );
        let mut corrupt = gz(&idx_images(2, 4, 4));
        let n = corrupt.len();
        corrupt[n / 2] ^= 0xff;
        corrupt.truncate(n - 6);
        check(load_pair(&corrupt, &idx_labels(&[0, 1])), "train-images-idx3-ubyte", "corrupt gzip");

        let mut rec = vec![3u8];
        rec.extend(vec![7u8; 3072]);
        let p = write(d, "batch.bin", &rec);
        assert_eq!(load_cifar(&p).unwrap().len(), 1);
        check(load_cifar(&write(d, "short.bin", &rec[..100])), "short.bin", "whole number");
        rec[0] = 10;
        check(load_cifar(&write(d, "label.bin", &rec)), "label.bin", "label 10 of record 0");

        check(load_csv(&write(d, "a.csv", b"1,0.5,0.25\n0,0.1\n")), "a.csv", "line 2: 1 features");
        check(load_csv(&write(d, "b.csv", b"x,0.5\n")), "b.csv", "line 1: label `x`");
        check(load_csv(&write(d, "c.csv", b"1,0.5,abc\n")), "c.csv", "field 3: `abc`");
        let ok = load_csv(&write(d, "d.csv", b"1,0.5,0.25\n0,0.1,0.2\n2,0,0\n")).unwrap();
        assert_eq!((ok.len(), ok.dim, ok.classes), (3, 2, 3));
        check(
            load_split(&DatasetName::Mnist, &DataOptions { data_dir: d.join("none").display().to_string(), ..opts() })
                .map(|s| s.train),
            "train-images-idx3-ubyte",
            "not found",
        );
    }

    #[test]
    fn names_parse() {
        assert_eq!(DatasetName::parse("teacher:8-3-100").unwrap().info().classes, 3);
        assert!(DatasetName::parse("teacher:8-1-100").is_err());
        assert_eq!(DatasetName::parse("csv:/x/y.csv").unwrap(), DatasetName::Csv("/x/y.csv".into()));
        assert!(DatasetName::parse("cifar").is_err());
    }
}
