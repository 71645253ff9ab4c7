//! The gradsweep wire contract.
//!
//! This crate holds the protobuf messages and the tonic client and server
//! stubs generated from `proto/gradsweep.proto` at build time (by protox, so
//! no system `protoc` is needed), plus the rest of what the binaries speak to
//! the outside: how a client reaches a coordinator (TLS, the shared token) and
//! the Prometheus endpoint. It holds no domain logic: the coordinator and the
//! worker each convert between these messages and the domain types of
//! `gradsweep-shared` in one module of their own.
//!
//! # Layout
//! * [`v1`] — generated code for package `gradsweep.v1`.
//! * [`transport`] — how clients reach a coordinator: address, TLS, token.
//! * [`chunks`] — blobs cut into chunks under the message limit, and put back together ([`Assembly`]).
//! * [`field_error`] — [`FieldError`]: what a receiver cannot read, named by the field.
//! * [`grid_value`] — grid values (`[user]` keys, axis values) to and from the wire's `GridValue`.
//! * [`states`] — the words of the sweep, run and worker states.
//! * [`metrics`] — Prometheus metric primitives, text exposition and the `/metrics` endpoint.
//! * [`FILE_DESCRIPTOR_SET`] — the encoded schema, served by gRPC reflection.
//! * [`PROTOCOL_VERSION`] — checked at worker registration.
//! * [`MAX_MESSAGE_BYTES`] — the size limit both sides enforce.
//! * [`moved_fields!`] — struct literals for the conversion modules: fields that cross unchanged, named once.

/// Generated messages and services of package `gradsweep.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("gradsweep.v1");
}

pub mod chunks;
pub mod field_error;
pub mod grid_value;

pub use chunks::{Assembly, AssemblyError, chunk_slices};
pub use field_error::FieldError;
pub mod metrics;
pub mod states;
pub mod transport;

/// The encoded `FileDescriptorSet` of `gradsweep.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gradsweep_descriptor.bin"));

/// Protocol version; a worker whose version differs is refused at registration.
/// 3: probe sketches in format 2 (lower slack, optional f16 rows), trajectory
/// sums with lag-0 sums and spectra, checkpoints with eigenvector bases.
/// 4: run specs whose `sketch_rank` may be `"auto"` (with `memory_mb` and
/// `at_epochs`), probes that record their sizing, sketches of different ℓ
/// that merge.
/// 5: probe sketches in format 3 (compacted, with their orthogonal row
/// groups), run specs with `shard_samples` (probes split into shards by
/// sample range and merged in shard order).
/// 6: probe shards leased to other workers (PublishPass, ClaimShard,
/// TakeShard, ClosePass, FetchPass, SubmitShard; shard assignments from
/// Acquire; shard leases in heartbeats and releases).
/// 7: run specs, final figures and results as typed messages (`RunSpec`,
/// `RunFinal`, `CellResult`, `SweepSummary`) instead of JSON strings;
/// sweep, run and worker states as enums instead of words.
pub const PROTOCOL_VERSION: u32 = 7;

/// `$ty { f: $src.f, …, g: expr, … }`: a struct literal whose fields `f`
/// move over unchanged (the same name and type on the wire and in the
/// domain) and whose fields `g` convert. The two sides' conversion modules
/// use it so that each direction names each field once; the literal is
/// exhaustive, so a field added to `$ty` must be added at every use.
#[macro_export]
macro_rules! moved_fields {
    ($src:ident => $($ty:ident)::+ { $($f:ident),* $(,)? ; $($g:ident : $e:expr),* $(,)? }) => {
        $($ty)::+ { $($f: $src.$f,)* $($g: $e,)* }
    };
}

/// No gRPC message in either direction may exceed this size (4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest payload of one blob chunk, leaving headroom under [`MAX_MESSAGE_BYTES`].
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
