//! Run events to wire reports — the worker's one wire↔domain module.

use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::report_request::Body;
use gradsweep_shared::run::RunEvent;

fn chunks(index: u32, bytes: &[u8], wrap: fn(pb::BlobChunk) -> Body) -> Vec<Body> {
    let parts = gradsweep_proto::chunk_slices(bytes);
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, data)| wrap(pb::BlobChunk { index, chunk_index: i as u32, chunk_count: count, data: data.to_vec() }))
        .collect()
}

/// The report bodies for one event, each under the message size limit.
/// `epoch_seconds` is how long a progress event's epoch trained on this
/// worker (NaN when unknown).
pub fn event_bodies(event: RunEvent, epoch_seconds: f64) -> Vec<Body> {
    match event {
        RunEvent::Progress { epoch, step, total_steps, train_loss, lr } => {
            vec![Body::Progress(pb::Progress { step, total_steps, train_loss, epoch, lr, seconds: epoch_seconds })]
        }
        RunEvent::Probe(p) => chunks(p.meta.index, &p.encode(), Body::Probe),
        RunEvent::Trajectory(t) => chunks(0, &serde_json::to_vec(&t).unwrap_or_default(), Body::Trajectory),
        RunEvent::Checkpoint(c) => chunks(0, &c.encode(), Body::Checkpoint),
        // A probe's passes are logged by the worker, not reported.
        RunEvent::ProbePass(_) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradsweep_proto::MAX_CHUNK_BYTES;

    #[test]
    fn large_blobs_are_split_under_the_limit() {
        let bytes = vec![7u8; MAX_CHUNK_BYTES * 2 + 5];
        let parts = chunks(3, &bytes, Body::Probe);
        assert_eq!(parts.len(), 3);
        let mut joined = vec![];
        for (i, p) in parts.iter().enumerate() {
            let Body::Probe(c) = p else { panic!("wrong body") };
            assert_eq!((c.index, c.chunk_index, c.chunk_count), (3, i as u32, 3));
            assert!(c.data.len() <= MAX_CHUNK_BYTES);
            joined.extend_from_slice(&c.data);
        }
        assert_eq!(joined, bytes);
    }
}
