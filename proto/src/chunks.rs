//! Blobs sent as chunks: cut under the message limit ([`chunk_slices`])
//! and put back together in order ([`Assembly`]) — the one reassembler
//! every receiver uses (coordinator, worker and client).

use crate::MAX_CHUNK_BYTES;

/// Splits a blob into chunk payloads of at most [`MAX_CHUNK_BYTES`], in
/// order; an empty blob is one empty chunk, so every blob has a last chunk.
pub fn chunk_slices(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(MAX_CHUNK_BYTES).collect() }
}

/// A blob whose chunks did not add up: out of order, over its size limit,
/// or cut short. The message names the blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AssemblyError(pub String);

/// Puts a blob sent in chunks back together: the chunks must come in
/// order, all claiming one count, and stay under a limit in bytes.
#[derive(Debug)]
pub struct Assembly {
    what: String,
    data: Vec<u8>,
    next: u32,
    count: Option<u32>,
    limit: usize,
}

impl Assembly {
    /// An empty blob called `what` in errors, of at most `limit` bytes.
    pub fn new(what: impl Into<String>, limit: usize) -> Self {
        Assembly { what: what.into(), data: vec![], next: 0, count: None, limit }
    }

    /// Adds chunk `index` of `count`; true when it was the blob's last.
    pub fn push(&mut self, index: u32, count: u32, data: &[u8]) -> Result<bool, AssemblyError> {
        if index != self.next || count == 0 || self.count.is_some_and(|c| c != count) || index >= count {
            return Err(AssemblyError(format!(
                "{}: chunk {index} of {count} out of order (expected chunk {})",
                self.what, self.next
            )));
        }
        if self.data.len() + data.len() > self.limit {
            return Err(AssemblyError(format!("{} larger than {} bytes", self.what, self.limit)));
        }
        self.data.extend_from_slice(data);
        (self.next, self.count) = (index + 1, Some(count));
        Ok(self.next == count)
    }

    /// Whether no chunk has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.count.is_none()
    }

    /// The whole blob, once its last chunk arrived.
    pub fn finish(self) -> Result<Vec<u8>, AssemblyError> {
        match self.count {
            Some(c) if c == self.next => Ok(self.data),
            Some(c) => Err(AssemblyError(format!("{}: the stream ended after {} of {c} chunks", self.what, self.next))),
            None => Err(AssemblyError(format!("{}: the stream ended before its first chunk", self.what))),
        }
    }

    /// The whole blob, once its last chunk arrived, and a fresh assembly
    /// for the next blob of a stream of several (called `what`).
    pub fn take(&mut self, what: impl Into<String>) -> Result<Vec<u8>, AssemblyError> {
        let limit = self.limit;
        std::mem::replace(self, Assembly::new(what, limit)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(chunks: &[(u32, u32, &[u8])], limit: usize) -> Result<Vec<u8>, AssemblyError> {
        let mut a = Assembly::new("blob", limit);
        for &(i, n, d) in chunks {
            a.push(i, n, d)?;
        }
        a.finish()
    }

    #[test]
    fn chunks_in_order_make_the_blob_and_anything_else_is_refused_naming_it() {
        let bytes: Vec<u8> = (0..(2 * MAX_CHUNK_BYTES + 5)).map(|i| i as u8).collect();
        let parts = chunk_slices(&bytes);
        let n = parts.len() as u32;
        let chunks: Vec<(u32, u32, &[u8])> = parts.iter().enumerate().map(|(i, p)| (i as u32, n, *p)).collect();
        assert_eq!(assemble(&chunks, usize::MAX).unwrap(), bytes);
        assert_eq!(assemble(&[(0, 1, &[][..])], 0).unwrap(), Vec::<u8>::new(), "an empty blob is one empty chunk");
        let err = |c: &[(u32, u32, &[u8])], limit| assemble(c, limit).unwrap_err().0;
        assert!(err(&[(1, 2, b"x")], 10).contains("blob: chunk 1 of 2 out of order (expected chunk 0)"));
        assert!(err(&[(0, 2, b"x"), (1, 3, b"y")], 10).contains("out of order"), "the count changed");
        assert!(err(&[(0, 0, b"x")], 10).contains("out of order"), "no chunks at all");
        assert!(err(&[(0, 2, b"xy"), (1, 2, b"z")], 2).contains("blob larger than 2 bytes"));
        assert!(err(&[(0, 2, b"x")], 10).contains("ended after 1 of 2 chunks"));
        assert!(err(&[], 10).contains("before its first chunk"));
    }

    #[test]
    fn a_stream_of_blobs_is_taken_one_after_another() {
        let mut a = Assembly::new("first", 10);
        assert!(a.is_empty());
        assert!(!a.push(0, 2, b"ab").unwrap());
        assert!(a.push(1, 2, b"c").unwrap());
        assert_eq!(a.take("second").unwrap(), b"abc");
        assert!(a.is_empty());
        assert!(a.push(0, 1, b"d").unwrap());
        assert_eq!(a.take("third").unwrap(), b"d");
        assert!(a.finish().unwrap_err().0.starts_with("third"));
    }
}
