//! Generates the Rust code for `proto/health.proto` into `OUT_DIR`: the
//! messages with rust-protobuf (`health.rs`), the ttRPC service with
//! ttrpc-compiler (`health_ttrpc.rs`). Pure Rust, no `protoc`.
//!
//! The generators start each file with inner attributes (`#![allow(..)]`)
//! and inner doc comments, which `include!` does not accept; one of the
//! attributes, `allow(unsafe_code)`, would also clash with the crate's
//! `forbid(unsafe_code)` (the code has no `unsafe`). They are removed here;
//! `src/protocols.rs` puts the same allowances, less that one, on the
//! modules.

use std::path::{Path, PathBuf};

const PROTO: &str = "proto/health.proto";

fn main() {
    println!("cargo:rerun-if-changed={PROTO}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let generated = out.join("generated");
    std::fs::create_dir_all(&generated).expect("creating OUT_DIR/generated");
    ttrpc_codegen::Codegen::new()
        .out_dir(&generated)
        .include("proto")
        .input(PROTO)
        .rust_protobuf()
        // The server side async, as kata-agent's; the client stays sync.
        .customize(ttrpc_codegen::Customize {
            async_server: true,
            ..Default::default()
        })
        .run()
        .expect("generating code for proto/health.proto");
    for name in ["health.rs", "health_ttrpc.rs"] {
        strip_inner_attributes(&generated.join(name), &out.join(name));
    }
}

fn strip_inner_attributes(from: &Path, to: &Path) {
    let text = std::fs::read_to_string(from)
        .unwrap_or_else(|err| panic!("reading {}: {err}", from.display()));
    let kept: String = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("#![") && !line.starts_with("//!")
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    std::fs::write(to, kept).unwrap_or_else(|err| panic!("writing {}: {err}", to.display()));
}
