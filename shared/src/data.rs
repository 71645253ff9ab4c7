//! Data sets: the bundled 8×8 digits and a synthetic teacher–student set.
//!
//! A data set is loaded whole into memory as f32 features (row-major,
//! `n × dim`) and `u32` labels, then split into train and test parts with a
//! generator that depends only on the split seed, so every run of a sweep
//! sees the same split.

use std::io::Read;

use crate::rng::{Rng, Stream};

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Errors while naming, reading or checking a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The data set name is not one gradsweep knows.
    #[error("unknown dataset `{0}` (known: digits, teacher, teacher:DIM-CLASSES-SAMPLES)")]
    Unknown(String),
    /// A data file could not be read.
    #[error("{source_name}: {message}")]
    Malformed {
        /// The file or resource.
        source_name: String,
        /// What is wrong, and where.
        message: String,
    },
}

/// Shape of a data set, known without loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Features per sample.
    pub dim: usize,
    /// Number of classes.
    pub classes: usize,
    /// Number of samples before the train/test split.
    pub samples: usize,
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
}

impl DatasetName {
    /// Parses a dataset name as written in a grid file.
    pub fn parse(name: &str) -> Result<Self, DataError> {
        match name {
            "digits" => Ok(DatasetName::Digits),
            "teacher" => Ok(DatasetName::Teacher { dim: 32, classes: 4, samples: 2000 }),
            other => {
                let Some(rest) = other.strip_prefix("teacher:") else {
                    return Err(DataError::Unknown(other.to_string()));
                };
                let parts: Vec<usize> = rest
                    .split('-')
                    .map(|p| p.parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| DataError::Unknown(other.to_string()))?;
                match parts[..] {
                    [dim, classes, samples] if dim > 0 && classes >= 2 && samples >= 2 => {
                        Ok(DatasetName::Teacher { dim, classes, samples })
                    }
                    _ => Err(DataError::Unknown(other.to_string())),
                }
            }
        }
    }

    /// The data set's shape.
    pub fn info(&self) -> DatasetInfo {
        match *self {
            DatasetName::Digits => DatasetInfo { dim: 64, classes: 10, samples: 1797 },
            DatasetName::Teacher { dim, classes, samples } => DatasetInfo { dim, classes, samples },
        }
    }
}

/// Samples in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Features per sample.
    pub dim: usize,
    /// Number of classes; every label is below it.
    pub classes: usize,
    /// Row-major `len × dim` features.
    pub x: Vec<f32>,
    /// Labels.
    pub y: Vec<u32>,
}

impl Dataset {
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
        Dataset { dim: self.dim, classes: self.classes, x, y }
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

/// Loads `name` and splits it: a fraction `test_fraction` of the samples,
/// chosen by a generator seeded with `split_seed`, goes to the test part.
pub fn load_split(name: &DatasetName, test_fraction: f64, split_seed: u64) -> Result<Split, DataError> {
    let all = match name {
        DatasetName::Digits => parse_digits_csv(DIGITS_CSV_GZ, "bundled digits.csv.gz")?,
        DatasetName::Teacher { dim, classes, samples } => teacher(*dim, *classes, *samples, split_seed),
    };
    let mut rng = Rng::new(split_seed, Stream::Data);
    let mut idx: Vec<usize> = (0..all.len()).collect();
    rng.shuffle(&mut idx);
    let n_test = ((all.len() as f64) * test_fraction).round() as usize;
    let (test_idx, train_idx) = idx.split_at(n_test.min(all.len().saturating_sub(1)));
    let mut train_idx = train_idx.to_vec();
    let mut test_idx = test_idx.to_vec();
    train_idx.sort_unstable();
    test_idx.sort_unstable();
    Ok(Split { train: all.subset(&train_idx), test: all.subset(&test_idx) })
}

/// Parses gzipped CSV rows of 64 pixel values (0..16) followed by the label.
fn parse_digits_csv(gz: &[u8], source_name: &str) -> Result<Dataset, DataError> {
    let bad = |message: String| DataError::Malformed { source_name: source_name.to_string(), message };
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz).read_to_string(&mut text).map_err(|e| bad(format!("cannot decompress: {e}")))?;
    let mut x = Vec::new();
    let mut y = Vec::new();
    for (lineno, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(bad(format!("line {}: expected 65 fields, found {}", lineno + 1, fields.len())));
        }
        for (col, f) in fields[..64].iter().enumerate() {
            let v: f32 = f
                .trim()
                .parse()
                .map_err(|_| bad(format!("line {}, field {}: `{f}` is not a number", lineno + 1, col + 1)))?;
            x.push(v / 16.0);
        }
        let label: u32 = fields[64]
            .trim()
            .parse()
            .map_err(|_| bad(format!("line {}: label `{}` is not an integer", lineno + 1, fields[64])))?;
        if label >= 10 {
            return Err(bad(format!("line {}: label {label} out of range 0..10", lineno + 1)));
        }
        y.push(label);
    }
    Ok(Dataset { dim: 64, classes: 10, x, y })
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
    Dataset { dim, classes, x, y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_with_known_counts() {
        let s = load_split(&DatasetName::Digits, 0.2, 0).unwrap();
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
        let a = load_split(&DatasetName::Digits, 0.2, 0).unwrap();
        let b = load_split(&DatasetName::Digits, 0.2, 0).unwrap();
        let c = load_split(&DatasetName::Digits, 0.2, 1).unwrap();
        assert_eq!(a.train, b.train);
        assert_ne!(a.train.y, c.train.y);
    }

    #[test]
    fn malformed_csv_names_the_line() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"1,2,3\n").unwrap();
        let gz = enc.finish().unwrap();
        let err = parse_digits_csv(&gz, "x.csv.gz").unwrap_err().to_string();
        assert!(err.contains("x.csv.gz") && err.contains("line 1") && err.contains("65 fields"), "{err}");
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            DatasetName::parse("teacher:8-3-100").unwrap().info(),
            DatasetInfo { dim: 8, classes: 3, samples: 100 }
        );
        assert!(DatasetName::parse("teacher:8-1-100").is_err());
        assert!(DatasetName::parse("cifar").is_err());
    }
}
