//! The layers of `src/`, each importing only those below it (`ARCHITECTURE.md`, *Layers*):
//!
//! ```text
//! core → wire → store → seed → forensics → raft → net → node (with error.rs) → http → lib
//! ```
//!
//! The test reads the source tree: every `crate::…` path outside comments and outside a
//! file's `#[cfg(test)]` module (or a `tests.rs` declared as one) names the layer it reaches into; a path into a higher layer
//! fails, naming the file, the line and the path. `core` must also stay pure: no tokio, fjall,
//! quinn, openraft, rayon or getrandom, and no clock; and no layer below `raft` uses openraft.

use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: &[&str] = &["core", "wire", "store", "seed", "forensics", "raft", "net", "node", "http", "top"];

/// The layer of a top-level module of the crate (a directory or file under `src/`).
fn layer_of_module(module: &str) -> Option<&'static str> {
    Some(match module {
        "core" => "core",
        "wire" => "wire",
        "store" => "store",
        "seed" => "seed",
        "forensics" => "forensics",
        "raft" => "raft",
        "net" => "net",
        // The crate's `Error` composes every subsystem's error for `SporeSystem`'s callers: it is
        // the node layer's, and nothing below may import it.
        "node" | "error" => "node",
        // The read-only HTTP endpoint over a running node: the top layer; nothing imports it.
        "http" => "http",
        "lib" => "top",
        _ => return None,
    })
}

/// The layer of a file under `src/`, by its path.
fn layer_of(rel: &str) -> &'static str {
    let first = rel.split('/').next().unwrap_or(rel).trim_end_matches(".rs");
    layer_of_module(first)
        .unwrap_or_else(|| panic!("src/{rel}: top-level module `{first}` has no layer; add it to tests/it/layers.rs"))
}

/// The layer a `crate::<module>::…` path reaches into.
fn layer_of_path(module: &str) -> Option<&'static str> {
    // Items re-exported at the crate root are reached through lib.rs, the top.
    if module.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
        return Some("top");
    }
    layer_of_module(module).filter(|l| *l != "top")
}

fn rank(layer: &str) -> usize {
    LAYERS.iter().position(|l| *l == layer).unwrap_or(usize::MAX)
}

/// Crates and calls `core` must not use.
const IMPURE: &[&str] = &[
    "tokio::",
    "fjall::",
    "quinn::",
    "openraft::",
    "rayon::",
    "getrandom::",
    "Instant::now",
    "SystemTime::now",
    "Utc::now",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` that are code: comments dropped, and nothing from a top-level
/// `#[cfg(test)]` on (the unit tests at a file's end).
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        if !code.trim().is_empty() {
            out.push((i + 1, code.to_string()));
        }
    }
    out
}

/// Whether `file` is a unit-test module in a file of its own: a `tests.rs` that its parent
/// (`mod.rs` beside it, or the file named after its directory) declares `#[cfg(test)] mod tests;`.
fn is_test_module(file: &Path) -> bool {
    let Some(dir) = file.parent() else { return false };
    file.file_name().is_some_and(|n| n == "tests.rs")
        && [dir.join("mod.rs"), dir.with_extension("rs")]
            .iter()
            .any(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("#[cfg(test)]\nmod tests;")))
}

/// Every `crate::module::rest` path on a line, as (module, rest).
fn crate_paths(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = line[at..].find("crate::") {
        let start = at + i + "crate::".len();
        let tail = &line[start..];
        let module: String = tail.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let rest = tail.get(module.len() + 2..).unwrap_or("").to_string();
        if module.is_empty() && tail.starts_with('{') {
            // `crate::{a::x, b::y}`: each item.
            let inner: String = tail[1..].chars().take_while(|c| *c != '}').collect();
            for item in inner.split(',') {
                let item = item.trim();
                let m: String = item.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.push((m.clone(), item.get(m.len() + 2..).unwrap_or("").to_string()));
            }
        } else {
            out.push((module, rest));
        }
        at = start;
    }
    out
}

/// Every upward import and impurity in `src/`, each as a message naming the file and line.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files.into_iter().filter(|f| !is_test_module(f)) {
        let rel = file.strip_prefix(src).expect("under src").to_string_lossy().replace('\\', "/");
        let own = layer_of(&rel);
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in code_lines(&text) {
            for (module, rest) in crate_paths(&line) {
                let Some(target) = layer_of_path(&module) else { continue };
                if rank(target) > rank(own) {
                    let path = format!("crate::{module}::{}", rest.split([';', ' ']).next().unwrap_or(""));
                    found.push(format!("src/{rel}:{n}: {own} imports {target} ({path})"));
                }
            }
            if own == "core" {
                for bad in IMPURE {
                    if line.contains(bad) {
                        found.push(format!("src/{rel}:{n}: core uses {bad}"));
                    }
                }
            }
            // Raft is the raft layer's business and of those above it: below, nothing knows of it.
            if rank(own) < rank("raft") && line.contains("openraft::") {
                found.push(format!("src/{rel}:{n}: {own} uses openraft"));
            }
        }
    }
    found
}

#[test]
fn every_layer_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "imports into a higher layer (or impure core):\n{}", found.join("\n"));
}

/// The check itself: a planted upward import is found, with its file and line.
#[test]
fn a_planted_upward_import_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("core")).expect("mkdir");
    std::fs::create_dir_all(src.join("store")).expect("mkdir");
    std::fs::write(
        src.join("core/x.rs"),
        "//! x\n// crate::node is only mentioned here\nuse crate::store::ledger::Ledger;\n",
    )
    .expect("write");
    std::fs::write(src.join("store/y.rs"), "use crate::core::x;\nfn f() { let _ = std::time::Instant::now(); }\n")
        .expect("write");
    std::fs::write(
        src.join("core/z.rs"),
        "fn now() -> u64 { std::time::SystemTime::now(); 0 }\n#[cfg(test)]\nmod tests { use crate::node::X; }\n",
    )
    .expect("write");
    // Unit tests in a file of their own may use the clock; a `tests.rs` compiled in may not.
    for (dir, parent) in [("core/t", "#[cfg(test)]\nmod tests;\n"), ("core/u", "mod tests;\n")] {
        std::fs::create_dir_all(src.join(dir)).expect("mkdir");
        std::fs::write(src.join(dir).join("mod.rs"), parent).expect("write");
        std::fs::write(src.join(dir).join("tests.rs"), "fn t() { let _ = std::time::Instant::now(); }\n")
            .expect("write");
    }
    let found = violations(src);
    assert_eq!(
        found,
        vec![
            "src/core/u/tests.rs:1: core uses Instant::now".to_string(),
            "src/core/x.rs:3: core imports store (crate::store::ledger::Ledger)".to_string(),
            "src/core/z.rs:1: core uses SystemTime::now".to_string()
        ],
        "{found:#?}"
    );
}

/// `ARCHITECTURE.md`'s code map names every source file of the library and the CLI: by its
/// path, or by its name on the row of its directory (`src/net/quic/` … `client.rs`).
#[test]
fn the_code_map_names_every_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let rows: Vec<&str> = map.lines().filter(|l| l.starts_with("| `")).collect();
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tools/src"), &mut files);
    let mut missing = Vec::new();
    for file in files {
        let rel = file.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/");
        let (dir, name) = rel.rsplit_once('/').expect("in a directory");
        let named = rows.iter().any(|row| {
            row.contains(&format!("`{rel}`"))
                || (row.starts_with(&format!("| `{dir}/`")) && row.contains(&format!("`{name}`")))
        });
        if !named {
            missing.push(rel);
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "ARCHITECTURE.md's code map does not name:\n{}", missing.join("\n"));
}
