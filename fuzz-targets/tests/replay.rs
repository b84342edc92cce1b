//! Replays every committed corpus file of every fuzz target (fuzz/corpus/
//! TARGET/*) on the stable toolchain: the smoke test of `cargo xtask fuzz
//! --smoke`, part of `cargo xtask test`. Found crashes are kept in the
//! corpus as regression inputs once fixed.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (every target has a committed corpus)",
                dir.display()
            )
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_of_every_target_runs_without_a_panic() {
    let mut total = 0;
    for (name, target) in minos_fuzz_targets::TARGETS {
        let files = corpus(name);
        assert!(!files.is_empty(), "fuzz/corpus/{name} is empty");
        for f in &files {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            target(&data);
        }
        println!("{name}: {} inputs replayed", files.len());
        total += files.len();
    }
    assert!(total >= minos_fuzz_targets::TARGETS.len());
}

#[test]
fn empty_and_tiny_inputs_are_harmless() {
    for (_, target) in minos_fuzz_targets::TARGETS {
        for input in [&b""[..], b"\0", b"\xff", b"[", b"=", b"\x01"] {
            target(input);
        }
    }
}
