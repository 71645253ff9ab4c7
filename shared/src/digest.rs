//! What is kept of a probe once its cell is merged, and the eigenvalues
//! that let a merged cell answer new rank thresholds without its sketches.
//!
//! A probe's sketch is `ℓ × d` rows (55 MB at ℓ = 1,024, d = 13,338 in
//! f32). Once every seed of a cell is merged, the results need only
//! statistics of the sketches, never the rows again. The coordinator then
//! keeps, per probe, a [`ProbeDigest`] (its eigenvalues, certificate,
//! exact moments and top [`OVERLAP_K`](crate::results::OVERLAP_K)
//! eigenvectors: `8ℓ + 4kd` bytes and a header), and, per cell,
//! [`CellSpectra`]: the eigenvalue lower ends behind every spectrum of the
//! cell's results (each run's probes and pooled spectrum, and the seeds'
//! merged final one), so that ranks at any threshold are added to the
//! stored results exactly as a recomputation from the sketches would
//! ([`crate::results::CellResult::add_thresholds`]).
//!
//! Both encodings are little-endian, versioned and CRC-32 protected; a
//! damaged or foreign blob is refused with what is wrong.

use crate::run::ProbeMeta;
use crate::sketch::SketchError;
use crate::stats::{RankThresholds, SketchMoments, SpectrumStats};

const DIGEST_MAGIC: &[u8; 4] = b"GSPD";
const SPECTRA_MAGIC: &[u8; 4] = b"GSCS";
const FORMAT_VERSION: u16 = 1;

/// A probe without its sketch rows: where it was taken, the sketch's
/// moments and certificate, all its eigenvalues, and its top eigenvectors.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeDigest {
    /// Where and when the probe was taken.
    pub meta: ProbeMeta,
    /// Size, certificate and exact moments of the sketch it digests.
    pub moments: SketchMoments,
    /// Eigenvalues of `D̂` (descending), as the sketch gave them.
    pub eigenvalues: Vec<f64>,
    /// The top eigenvectors of `D̂` (each of length d, orthonormal up to
    /// f32 rounding), in the order of `eigenvalues`.
    pub top_vectors: Vec<Vec<f32>>,
}

impl ProbeDigest {
    /// The probe's spectrum, with ranks at the user's thresholds `th` too:
    /// the same statistics the sketch gave.
    pub fn spectrum(&self, th: &RankThresholds) -> SpectrumStats {
        self.moments.spectrum(&self.moments.lower_ends(&self.eigenvalues), th)
    }

    /// Serialises as `magic, version, [u32 header length][header JSON], n,
    /// d, ℓ, Δ, s, tr D, ‖∇f‖², [u32 count][eigenvalues f64], [u32 k][k × d
    /// f32], CRC-32`.
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.moments;
        let header = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out =
            Vec::with_capacity(80 + header.len() + 8 * self.eigenvalues.len() + 4 * m.d * self.top_vectors.len());
        out.extend_from_slice(DIGEST_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&m.n.to_le_bytes());
        out.extend_from_slice(&(m.d as u32).to_le_bytes());
        out.extend_from_slice(&(m.ell as u32).to_le_bytes());
        for v in [m.delta, m.slack, m.trace, m.grad_norm_sq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_f64s(&mut out, &self.eigenvalues);
        out.extend_from_slice(&(self.top_vectors.len() as u32).to_le_bytes());
        for v in &self.top_vectors {
            v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
        }
        seal(out)
    }

    /// Parses [`ProbeDigest::encode`]'s output; `expect_dim` checks d.
    pub fn decode(bytes: &[u8], expect_dim: Option<usize>) -> Result<Self, SketchError> {
        let mut r = Reader::open(bytes, DIGEST_MAGIC, "probe digest")?;
        let len = r.u32()? as usize;
        let meta: ProbeMeta = serde_json::from_slice(r.bytes(len)?)
            .map_err(|e| SketchError::Malformed(format!("probe digest header: {e}")))?;
        let n = r.u64()?;
        let (d, ell) = (r.u32()? as usize, r.u32()? as usize);
        if let Some(want) = expect_dim
            && want != d
        {
            return Err(SketchError::Mismatch(format!("probe digest has dimension {d}, expected {want}")));
        }
        let (delta, slack, trace, grad_norm_sq) = (r.f64()?, r.f64()?, r.f64()?, r.f64()?);
        let eigenvalues = r.f64s()?;
        let k = r.u32()? as usize;
        let need = k.checked_mul(d).and_then(|x| x.checked_mul(4));
        if need != Some(r.rest()) {
            return Err(SketchError::Malformed(format!(
                "probe digest: {} bytes left for {k} eigenvectors of dimension {d}",
                r.rest()
            )));
        }
        let top_vectors = (0..k).map(|_| r.f32s(d)).collect::<Result<Vec<_>, _>>()?;
        let finite = [delta, slack, trace].iter().all(|v| v.is_finite())
            && eigenvalues.iter().all(|v| v.is_finite())
            && top_vectors.iter().flatten().all(|v| v.is_finite());
        if !finite {
            return Err(SketchError::NonFinite("probe digest"));
        }
        let moments = SketchMoments { n, d, ell, delta, slack, trace, grad_norm_sq };
        Ok(ProbeDigest { meta, moments, eigenvalues, top_vectors })
    }
}

/// The eigenvalue lower ends behind every spectrum of a merged cell, in the
/// order [`crate::results::CellResult::add_thresholds`] visits them: each
/// run (by seed) with its probes in order then its pooled spectrum, then
/// the seeds' merged final spectrum.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CellSpectra {
    /// One list per spectrum, in visiting order.
    pub lists: Vec<Vec<f64>>,
}

impl CellSpectra {
    /// Serialises as `magic, version, [u32 lists], each [u32 count][f64s], CRC-32`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.lists.iter().map(|l| 4 + 8 * l.len()).sum::<usize>());
        out.extend_from_slice(SPECTRA_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.lists.len() as u32).to_le_bytes());
        self.lists.iter().for_each(|l| put_f64s(&mut out, l));
        seal(out)
    }

    /// Parses [`CellSpectra::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, SketchError> {
        let mut r = Reader::open(bytes, SPECTRA_MAGIC, "cell spectra")?;
        let count = r.u32()? as usize;
        let lists = (0..count).map(|_| r.f64s()).collect::<Result<Vec<_>, _>>()?;
        if r.rest() != 0 {
            return Err(SketchError::Malformed(format!("cell spectra: {} bytes after the last list", r.rest())));
        }
        if !lists.iter().flatten().all(|v| v.is_finite()) {
            return Err(SketchError::NonFinite("cell spectra"));
        }
        Ok(CellSpectra { lists })
    }
}

fn put_f64s(out: &mut Vec<u8>, values: &[f64]) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A checked cursor over a sealed blob's body.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the checksum, magic and version of `bytes`.
    fn open(bytes: &'a [u8], magic: &[u8; 4], what: &'static str) -> Result<Self, SketchError> {
        let bad = |m: String| SketchError::Malformed(format!("{what}: {m}"));
        if bytes.len() < 10 {
            return Err(bad(format!("{} bytes is too short", bytes.len())));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(bad("checksum mismatch (corrupted or truncated)".into()));
        }
        if &body[..4] != magic {
            return Err(bad("wrong magic number".into()));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if version != FORMAT_VERSION {
            return Err(bad(format!("unsupported version {version} (this build reads {FORMAT_VERSION})")));
        }
        Ok(Reader { body, at: 6, what })
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], SketchError> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.body.get(self.at..end))
            .ok_or_else(|| SketchError::Malformed(format!("{}: truncated", self.what)))?;
        self.at += n;
        Ok(s)
    }

    fn rest(&self) -> usize {
        self.body.len() - self.at
    }

    fn u32(&mut self) -> Result<u32, SketchError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, SketchError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    fn f64(&mut self) -> Result<f64, SketchError> {
        Ok(f64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }

    fn f64s(&mut self) -> Result<Vec<f64>, SketchError> {
        let n = self.u32()? as usize;
        let raw =
            self.bytes(n.checked_mul(8).ok_or_else(|| SketchError::Malformed(format!("{}: length", self.what)))?)?;
        Ok(raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, SketchError> {
        let raw = self.bytes(n * 4)?;
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sketch::FdSketch;

    fn sketch(d: usize, ell: usize, rows: usize) -> FdSketch {
        let mut rng = crate::rng::Rng::new(7, crate::rng::Stream::Other(0));
        let mut sk = FdSketch::new(d, ell);
        let block: Vec<f32> = (0..rows * d).map(|i| rng.normal() as f32 * (1.0 + (i % d) as f32 * 0.01)).collect();
        sk.insert_block(&block);
        sk.compact();
        sk
    }

    fn meta() -> ProbeMeta {
        ProbeMeta {
            index: 1,
            epoch: 3,
            step: 90,
            train_loss: 0.25,
            train_accuracy: 0.875,
            exact: None,
            sizing: None,
            saved_rows: None,
        }
    }

    #[test]
    fn a_digest_states_the_sketchs_spectrum_at_any_threshold_and_travels_intact() {
        let sk = sketch(40, 8, 60);
        let (values, vectors) = sk.eigen_summary(3);
        let digest = ProbeDigest {
            meta: meta(),
            moments: SketchMoments::of(&sk),
            eigenvalues: values.clone(),
            top_vectors: vectors.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect(),
        };
        let th = RankThresholds { relative: vec![1e-3, 0.5], absolute: vec![1e-4] };
        for t in [RankThresholds::default(), th] {
            assert_eq!(digest.spectrum(&t), SpectrumStats::from_sketch_eigenvalues(&sk, values.clone(), &t));
        }
        let bytes = digest.encode();
        assert_eq!(ProbeDigest::decode(&bytes, Some(40)).unwrap(), digest);
        assert!(matches!(ProbeDigest::decode(&bytes, Some(41)), Err(SketchError::Mismatch(_))));
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(ProbeDigest::decode(&bad, None).unwrap_err().to_string().contains("checksum"));
        assert!(ProbeDigest::decode(&bytes[..bytes.len() - 9], None).is_err());
        assert!(ProbeDigest::decode(&CellSpectra::default().encode(), None).unwrap_err().to_string().contains("magic"));
        // The digest is a small part of the sketch it replaces.
        assert!(bytes.len() * 2 < sk.encode().len(), "{} vs {}", bytes.len(), sk.encode().len());
    }

    #[test]
    fn cell_spectra_travel_intact_and_damage_is_named() {
        let s = CellSpectra { lists: vec![vec![3.0, 2.0, -1e-9], vec![], vec![1.0]] };
        let bytes = s.encode();
        assert_eq!(CellSpectra::decode(&bytes).unwrap(), s);
        assert_eq!(CellSpectra::decode(&CellSpectra::default().encode()).unwrap(), CellSpectra::default());
        let e = CellSpectra::decode(&bytes[..bytes.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("cell spectra") && e.contains("checksum"), "{e}");
    }
}
