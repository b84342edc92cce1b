//! The agent protocol as far as the shim speaks it: Kata's `grpc.Health`
//! service (`proto/health.proto`, as in kata-containers
//! `src/libs/protocols/protos/health.proto`), generated at build time by
//! `build.rs`.
//!
//! The ttRPC paths are `/grpc.Health/Check` and `/grpc.Health/Version`.

/// The messages: `CheckRequest`, `HealthCheckResponse` (with its
/// `ServingStatus`), `VersionCheckResponse`.
#[allow(
    clippy::all,
    dead_code,
    missing_debug_implementations,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_mut,
    unused_results
)]
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/health.rs"));
}

/// The service: the `Health` trait a server implements, `create_health` to
/// register it, and `HealthClient`.
#[allow(
    clippy::all,
    dead_code,
    missing_debug_implementations,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    unused_imports,
    unused_results
)]
pub mod health_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
}
