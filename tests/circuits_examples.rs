//! The committed circuits under circuits/: every file resolves cleanly (through the library, as
//! `circuit check` does), is in `circuit fmt`'s canonical form, and the built-in model's files pass
//! `circuit test`, every expectation of them. So `cargo test` alone covers what CI runs.
//! (The GPT-2 small files need weights that are not in the repository; CI runs `circuit test` on
//! them only when circuits/gpt2-small/model/model.safetensors exists.)

use std::path::{Path, PathBuf};
use std::process::Command;

use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

fn circuits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("circuits")
}

/// Every `.circuit` file under `dir`, recursively, sorted.
fn circuit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "circuit") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_committed_circuit_resolves_without_warnings_and_is_formatted() {
    let files = circuit_files(&circuits_dir());
    // Both model folders hold files; a lost directory must not make this test vacuous.
    for folder in ["toy-seqcont", "gpt2-small"] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(circuits_dir().join(folder))),
            "no .circuit file under circuits/{folder}"
        );
    }
    let mut problems = Vec::new();
    for file in &files {
        match load_file(file, &RealEnvironment, &ResolveOptions::default()) {
            Ok(resolved) if resolved.warnings.is_empty() => {}
            Ok(resolved) => problems.push(format!(
                "{}: warnings\n{}",
                file.display(),
                resolved.warnings.render_plain(100)
            )),
            Err(errors) => problems.push(format!(
                "{}: errors\n{}",
                file.display(),
                errors.render_plain(100)
            )),
        }
        let text = std::fs::read_to_string(file).unwrap();
        match circuit::syntax::format_source(&file.display().to_string(), &text) {
            Ok(formatted) if formatted == text => {}
            Ok(_) => problems.push(format!(
                "{}: not in canonical form (run `circuit fmt`)",
                file.display()
            )),
            Err(errors) => problems.push(format!(
                "{}: does not parse\n{}",
                file.display(),
                errors.render_plain(100)
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn circuit_test_passes_every_expectation_of_the_builtin_models_circuits() {
    let dir = circuits_dir().join("toy-seqcont");
    let cache = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .arg("test")
        .arg(&dir)
        .env("CIRCUIT_CACHE_DIR", cache.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "circuit test {} failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        dir.display()
    );
    // Every `expect` line of the files ran and passed: none skipped.
    let expectations: usize = circuit_files(&dir)
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| l.trim_start().starts_with("expect "))
                .count()
        })
        .sum();
    assert!(expectations > 0);
    let summary = format!("{expectations} passed, 0 failed");
    assert!(
        stdout.lines().chain(stderr.lines()).any(|l| l == summary),
        "expected the summary line `{summary}`\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
