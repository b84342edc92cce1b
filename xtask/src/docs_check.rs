//! Checks that keep the docs from drifting (tests only): docs/ARCHITECTURE.md's
//! table of `unsafe` locations against the sources, and every relative link
//! in the repository's Markdown against its files.

use std::path::{Path, PathBuf};

use crate::util::root;

/// The crates whose `unsafe` the table lists.
const CRATES: [&str; 5] = ["init", "timesync", "agent-shim", "busd", "common"];

/// `.rs` files under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `source` has `unsafe` code before its test module, comments
/// left out.
fn has_unsafe(source: &str) -> bool {
    let code = source.split("\n#[cfg(test)]").next().unwrap_or(source);
    code.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .any(|l| {
            ["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"]
                .iter()
                .any(|k| l.contains(k))
        })
}

/// The repository-relative paths in backticks of the `### unsafe` section.
fn listed_unsafe(architecture: &str) -> Vec<String> {
    let start = architecture
        .find("### unsafe\n")
        .expect("docs/ARCHITECTURE.md has a `### unsafe` section");
    let section = &architecture[start..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let mut out: Vec<String> = section[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| {
            w.ends_with(".rs") && CRATES.iter().any(|c| w.starts_with(&format!("{c}/src/")))
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Markdown files of the repository (not build output or dependencies).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The targets of `[text](target)` links in `text`.
fn link_targets(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        out.push(rest[..end].trim());
        rest = &rest[end..];
    }
    out
}

#[test]
fn the_unsafe_table_lists_every_file_with_unsafe_code() {
    let root = root();
    let mut found = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            if has_unsafe(&text) {
                found.push(f.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    let architecture = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    assert_eq!(
        listed_unsafe(&architecture),
        found,
        "docs/ARCHITECTURE.md's `### unsafe` table (left) against the files with unsafe code (right)"
    );
}

#[test]
fn the_unsafe_scan_sees_code_not_comments_or_tests() {
    assert!(has_unsafe("fn f() {\n    unsafe { g() }\n}\n"));
    assert!(!has_unsafe("// unsafe { g() }\nfn f() {}\n"));
    assert!(!has_unsafe(
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    unsafe { g() }\n}\n"
    ));
    assert!(!has_unsafe("#[allow(unsafe_code)]\nfn f() {}\n"));
    assert_eq!(
        listed_unsafe(
            "### unsafe\n`xtask/src/t.rs`\n| `init/src/x.rs` | y |\n| `busd/src/z.rs` | `w` |\n\
             ## next\n`common/src/q.rs`"
        ),
        ["busd/src/z.rs", "init/src/x.rs"]
    );
}

#[test]
fn every_relative_link_in_the_markdown_resolves_inside_the_repository() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.len() > 10, "{files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in link_targets(&text) {
            if target.is_empty()
                || target.starts_with('#')
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.contains(' ')
            {
                continue;
            }
            let path = target.split('#').next().unwrap_or(target);
            let resolved = file.parent().unwrap().join(path);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|p| p.starts_with(root.canonicalize().unwrap()));
            if !inside {
                broken.push(format!(
                    "{}: {target}",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that do not resolve inside the repository:\n{}",
        broken.join("\n")
    );
}
