//! The `.circuit` files a command is given: files as named, folders searched recursively for
//! `*.circuit`, all sorted, each file once. `eval`, `test` and `check` take several.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The `.circuit` files under `paths`, sorted, each once. A path that is not a folder is kept
/// as given, even when it does not exist: the command reports it with the file's other
/// problems, and goes on with the other files.
pub fn collect_files(paths: &[PathBuf]) -> miette::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "circuit") {
                out.insert(path);
            }
        }
        Ok(())
    }
    let mut files = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut files).map_err(|e| {
                miette::miette!(
                    code = "circuit::cli::read_dir",
                    "cannot read directory {}: {e}",
                    path.display()
                )
            })?;
        } else {
            files.insert(path.clone());
        }
    }
    Ok(files.into_iter().collect())
}
