//! Fingerprints the code that computes numbers (engine, plan, ablation, measurement), so that
//! the on-disk cache of reference values and results is keyed on it: a developer who changes
//! how a forward pass or an ablation is computed never reads results of the old code.

use std::path::Path;

const NUMERIC_CODE: [&str; 4] = ["src/model", "src/plan", "src/ablate", "src/measure"];

fn main() {
    let mut files = Vec::new();
    for dir in NUMERIC_CODE {
        println!("cargo:rerun-if-changed={dir}");
        collect(Path::new(dir), &mut files);
    }
    files.sort();
    // FNV-1a over (path, contents): stable across toolchains, no dependency needed.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for path in &files {
        let contents = std::fs::read(path).unwrap_or_default();
        for byte in path.to_string_lossy().bytes().chain(contents) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    println!("cargo:rustc-env=CIRCUIT_NUMERIC_CODE_FINGERPRINT={hash:016x}");
}

fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
