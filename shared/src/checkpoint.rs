//! Run checkpoints: everything a run needs to continue from a segment
//! boundary and end bit-identical to a run that never stopped.
//!
//! What is saved: the weights, the BatchNorm buffers, the momentum buffer,
//! the position (epoch, step within the epoch, global step), the partial
//! loss sum of the current epoch, the last epoch's mean loss, and the
//! trajectory recorder (its lag sums and the window of recent points). What
//! is *not* saved, because it is a pure function of (seed, position): the
//! data order of each epoch, the dropout masks of each step, the learning
//! rate, random projection directions. (Directions taken from the
//! eigenvectors of `D` at a probe are saved: they come from weights the
//! checkpoint no longer holds.) Every reduction runs in a fixed order on
//! one thread, so continuing from a checkpoint repeats the same arithmetic.
//!
//! The encoding is little-endian and versioned, with a CRC-32 over the whole
//! blob and a fingerprint of the run's spec, so a truncated or corrupted
//! checkpoint, or one of another run, is refused:
//!
//! ```text
//! "GSCK" | version u16 | flags u16 | header_len u32 | header (JSON) |
//! params f32×d | buffers f32×nb | velocity f32×d | basis f32×(kb·d) | user u8×nu | crc32 u32
//! ```
//!
//! where `nu` (in the header; 0 when absent) is the length of a `python:`
//! trainer's own state ([`Checkpoint::user_state`]): opaque bytes gradsweep
//! keeps and hands back on resume, with no weights of its own beside them.
//!
//! where `kb` (in the header; 0 when absent, and absent in checkpoints
//! written before eigenvector bases existed) is the number of saved
//! projection directions.
//!
//! ```text
//! ```

use serde::{Deserialize, Serialize};

use crate::spec::RunSpec;
use crate::trajectory::TrajectoryRecorder;

const MAGIC: &[u8; 4] = b"GSCK";

/// Version of the checkpoint encoding this build reads and writes.
pub const CHECKPOINT_FORMAT_VERSION: u16 = 1;

/// Why a checkpoint was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// The bytes are not a well-formed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// A well-formed checkpoint of another run or model.
    #[error("checkpoint does not belong to this run: {0}")]
    Mismatch(String),
}

/// Where a run stands at a segment boundary, with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Small fields (JSON in the encoding).
    pub header: CheckpointHeader,
    /// Weights.
    pub params: Vec<f32>,
    /// Non-trained buffers (BatchNorm running statistics).
    pub buffers: Vec<f32>,
    /// Momentum buffer.
    pub velocity: Vec<f32>,
    /// Projection directions chosen from `D`'s eigenvectors (`kb × d`,
    /// row-major), once chosen; empty otherwise.
    pub basis: Vec<f32>,
    /// A `python:` trainer's own state (its model, optimiser, data order,
    /// as the user's code serialised them); empty for the built-in engine.
    pub user_state: Vec<u8>,
}

/// The position and small state of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointHeader {
    /// [`spec_fingerprint`] of the run it belongs to.
    pub spec_fingerprint: String,
    /// Epoch the run is in (0-based); `step_in_epoch` steps of it are done.
    pub epoch: u32,
    /// Steps done within `epoch` (0 at an epoch boundary).
    pub step_in_epoch: u64,
    /// SGD steps done in total.
    pub step: u64,
    /// Probes already taken (and reported before this checkpoint).
    pub probes_done: u32,
    /// Sum of the mini-batch losses of `epoch` so far.
    pub loss_sum: f64,
    /// Mean mini-batch loss of the last finished epoch (NaN before the first).
    #[serde(with = "crate::json_f64")]
    pub last_epoch_loss: f64,
    /// The trajectory recorder.
    pub recorder: TrajectoryRecorder,
    /// The exact state of a `control:` run (its f64 coordinates; `params`
    /// then holds them rounded to f32); empty for networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state: Vec<f64>,
    /// The per-epoch recorder of a run with `epoch_psd_window` (see
    /// [`crate::epochs`]); none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_recorder: Option<crate::epochs::EpochRecorder>,
}

/// A fingerprint of everything in a spec that determines a run's results.
pub fn spec_fingerprint(spec: &RunSpec) -> String {
    fingerprint_of(&serde_json::to_vec(spec).unwrap_or_default())
}

fn fingerprint_of(json: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(json);
    h[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a checkpoint with `fingerprint` was written for `spec`, by this
/// build or by the one before it ([`legacy_spec_fingerprint`]).
pub fn written_for(spec: &RunSpec, fingerprint: &str) -> bool {
    fingerprint == spec_fingerprint(spec) || legacy_spec_fingerprint(spec).is_some_and(|l| l == fingerprint)
}

/// The fingerprint that builds from before the probe options `basis`,
/// `basis_probe`, `psd_window` and `wire_precision` wrote for this spec: the
/// same hash over the spec without them. Only a spec that leaves them at
/// their defaults (what those builds ran) has one, so a sweep interrupted
/// before an upgrade resumes from its checkpoints after it.
pub fn legacy_spec_fingerprint(spec: &RunSpec) -> Option<String> {
    let p = &spec.probe;
    let defaults = crate::spec::ProbeConfig::default();
    if (p.basis, p.basis_probe, p.psd_window, p.wire_precision)
        != (defaults.basis, defaults.basis_probe, defaults.psd_window, defaults.wire_precision)
    {
        return None;
    }
    /// `ProbeConfig` as those builds serialised it, field for field.
    #[derive(Serialize)]
    struct ProbeV1 {
        every_epochs: u32,
        sketch_rank: u32,
        projections: u32,
        max_lag: u32,
        burn_in_epochs: u32,
        projection_seed: u64,
        block_size: u32,
        exact: bool,
    }
    #[derive(Serialize)]
    struct SpecV1<'a> {
        train: &'a crate::spec::TrainConfig,
        probe: ProbeV1,
        seed: u64,
    }
    let v1 = SpecV1 {
        train: &spec.train,
        probe: ProbeV1 {
            every_epochs: p.every_epochs,
            sketch_rank: p.sketch_rank.fixed()?,
            projections: p.projections,
            max_lag: p.max_lag,
            burn_in_epochs: p.burn_in_epochs,
            projection_seed: p.projection_seed,
            block_size: p.block_size,
            exact: p.exact,
        },
        seed: spec.seed,
    };
    Some(fingerprint_of(&serde_json::to_vec(&v1).ok()?))
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

impl Checkpoint {
    /// Serialises the checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&Wire {
            h: &self.header,
            params: self.params.len(),
            buffers: self.buffers.len(),
            basis: self.basis.len().checked_div(self.params.len()).unwrap_or(0),
            user: self.user_state.len(),
        })
        .expect("a checkpoint header always serialises");
        let mut out = Vec::with_capacity(16 + header.len() + 4 * (2 * self.params.len() + self.buffers.len()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        put_f32s(&mut out, &self.params);
        put_f32s(&mut out, &self.buffers);
        put_f32s(&mut out, &self.velocity);
        put_f32s(&mut out, &self.basis);
        out.extend_from_slice(&self.user_state);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses [`Checkpoint::encode`]'s output and checks that it belongs to
    /// `spec` (by fingerprint) with `params` weights. Rejects truncation,
    /// corruption, another version, another run and non-finite state.
    pub fn decode(bytes: &[u8], spec: &RunSpec, params: usize) -> Result<Checkpoint, CheckpointError> {
        let c = Self::decode_unchecked(bytes)?;
        if !written_for(spec, &c.header.spec_fingerprint) {
            return Err(CheckpointError::Mismatch(format!(
                "it was written for run spec {}, this run's is {}",
                c.header.spec_fingerprint,
                spec_fingerprint(spec)
            )));
        }
        if c.params.len() != params {
            return Err(CheckpointError::Mismatch(format!("{} weights, the model has {params}", c.params.len())));
        }
        Ok(c)
    }

    /// Parses without checking which run it belongs to.
    pub fn decode_unchecked(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let bad = |m: String| CheckpointError::Malformed(m);
        if bytes.len() < 16 {
            return Err(bad(format!("{} bytes is too short", bytes.len())));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if &body[..4] != MAGIC {
            return Err(bad("wrong magic number".into()));
        }
        if crc32fast::hash(body) != crc {
            return Err(bad("checksum mismatch (corrupted or truncated)".into()));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if version != CHECKPOINT_FORMAT_VERSION {
            return Err(bad(format!("unsupported version {version} (this build reads {CHECKPOINT_FORMAT_VERSION})")));
        }
        let hlen = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        let header_end =
            12usize.checked_add(hlen).filter(|&e| e <= body.len()).ok_or_else(|| bad("header length".into()))?;
        let wire: WireOwned = serde_json::from_slice(&body[12..header_end]).map_err(|e| bad(format!("header: {e}")))?;
        let user_start = body.len().checked_sub(wire.user).filter(|&u| u >= header_end);
        let user_start = user_start.ok_or_else(|| bad(format!("{} bytes of user state announced", wire.user)))?;
        let (floats, user_state) = body[header_end..].split_at(user_start - header_end);
        let need = wire
            .params
            .checked_mul(wire.basis.saturating_add(2))
            .and_then(|x| x.checked_add(wire.buffers))
            .and_then(|x| x.checked_mul(4));
        if need != Some(floats.len()) {
            return Err(bad(format!(
                "{} bytes of state for {} weights, {} buffers and {} directions",
                floats.len(),
                wire.params,
                wire.buffers,
                wire.basis
            )));
        }
        let all: Vec<f32> = floats.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if all.iter().any(|x| !x.is_finite()) {
            return Err(bad("non-finite weights or optimiser state".into()));
        }
        let h = wire.h;
        if !h.loss_sum.is_finite() || !h.recorder.is_finite() || h.state.iter().any(|v| !v.is_finite()) {
            return Err(bad("non-finite loss or trajectory sums".into()));
        }
        let (p, rest) = all.split_at(wire.params);
        let (b, rest) = rest.split_at(wire.buffers);
        let (v, basis) = rest.split_at(wire.params);
        Ok(Checkpoint {
            header: h,
            params: p.to_vec(),
            buffers: b.to_vec(),
            velocity: v.to_vec(),
            basis: basis.to_vec(),
            user_state: user_state.to_vec(),
        })
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    h: &'a CheckpointHeader,
    params: usize,
    buffers: usize,
    basis: usize,
    #[serde(skip_serializing_if = "is_zero")]
    user: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOwned {
    h: CheckpointHeader,
    params: usize,
    buffers: usize,
    #[serde(default)]
    basis: usize,
    #[serde(default)]
    user: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::default_lags;

    fn sample(spec: &RunSpec) -> Checkpoint {
        let mut recorder = TrajectoryRecorder::new(2, default_lags(4));
        for t in 0..10 {
            recorder.push(&[t as f64 * 0.1, (t as f64).sin()]);
        }
        Checkpoint {
            header: CheckpointHeader {
                spec_fingerprint: spec_fingerprint(spec),
                epoch: 3,
                step_in_epoch: 5,
                step: 50,
                probes_done: 1,
                loss_sum: 1.25,
                last_epoch_loss: 0.3,
                recorder,
                state: vec![],
                epoch_recorder: None,
            },
            params: vec![0.5, -1.0, 2.0],
            buffers: vec![1.0],
            velocity: vec![0.0, 0.1, -0.2],
            basis: vec![],
            user_state: vec![],
        }
    }

    #[test]
    fn roundtrip_and_every_rejection() {
        let spec = RunSpec { train: Default::default(), probe: Default::default(), seed: 3, user: Default::default() };
        let c = sample(&spec);
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes, &spec, 3).unwrap(), c);
        // With saved eigenvector directions (2 × d).
        let mut with_basis = c.clone();
        with_basis.basis = vec![1.0, 0.0, 0.0, 0.0, 0.6, -0.8];
        assert_eq!(Checkpoint::decode(&with_basis.encode(), &spec, 3).unwrap(), with_basis);
        with_basis.basis[4] = f32::INFINITY;
        assert!(Checkpoint::decode(&with_basis.encode(), &spec, 3).unwrap_err().to_string().contains("non-finite"));

        let mut other = spec.clone();
        other.seed = 7;
        assert!(matches!(Checkpoint::decode(&bytes, &other, 3), Err(CheckpointError::Mismatch(_))));
        assert!(matches!(Checkpoint::decode(&bytes, &spec, 4), Err(CheckpointError::Mismatch(_))));
        let truncated = &bytes[..bytes.len() - 9];
        assert!(Checkpoint::decode(truncated, &spec, 3).unwrap_err().to_string().contains("checksum"));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x40;
        assert!(Checkpoint::decode(&flipped, &spec, 3).unwrap_err().to_string().contains("checksum"));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(Checkpoint::decode(&magic, &spec, 3).unwrap_err().to_string().contains("magic"));
        assert!(Checkpoint::decode(&bytes[..8], &spec, 3).unwrap_err().to_string().contains("too short"));
        let mut nan = c.clone();
        nan.velocity[1] = f32::NAN;
        assert!(Checkpoint::decode(&nan.encode(), &spec, 3).unwrap_err().to_string().contains("non-finite"));
        // A newer version is refused by name.
        let mut v2 = bytes[..bytes.len() - 4].to_vec();
        v2[4] = 2;
        let crc = crc32fast::hash(&v2);
        v2.extend_from_slice(&crc.to_le_bytes());
        assert!(Checkpoint::decode(&v2, &spec, 3).unwrap_err().to_string().contains("unsupported version 2"));
    }
}
