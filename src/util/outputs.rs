//! Checks on the files a command will write, made before any work starts: a report must not
//! land on an input of the run (the `.circuit` file, its dataset, the model's files) or on
//! another output of the same command, and its folder must exist and be writable. Paths are
//! compared as the files they end up being: symlinks followed, `./` and `..` resolved.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

/// A file a command was asked to write, named by its flag (`-o`, `--svg`, ...).
#[derive(Clone, Debug)]
pub struct Output<'a> {
    pub flag: &'static str,
    pub path: &'a Path,
}

/// Why an output cannot be written.
#[derive(Debug, Error, Diagnostic)]
pub enum OutputError {
    #[error("{flag} {path} would overwrite {input}, an input of this run")]
    #[diagnostic(
        code(circuit::output::is_input),
        help("write the output to another file")
    )]
    IsInput {
        flag: &'static str,
        path: String,
        input: String,
    },
    #[error("{flag} and {other} both write {path}")]
    #[diagnostic(
        code(circuit::output::same_file),
        help("give each output its own file")
    )]
    SameFile {
        flag: &'static str,
        other: &'static str,
        path: String,
    },
    #[error("cannot write {flag} {path}: the folder {folder} does not exist")]
    #[diagnostic(
        code(circuit::output::no_folder),
        help("create the folder first, or write the output elsewhere")
    )]
    NoFolder {
        flag: &'static str,
        path: String,
        folder: String,
    },
    #[error("cannot write {flag} {path}: {reason}")]
    #[diagnostic(
        code(circuit::output::not_writable),
        help("check the folder's permissions, or write the output elsewhere")
    )]
    NotWritable {
        flag: &'static str,
        path: String,
        reason: String,
    },
    #[error("cannot write {flag} {path}: it is a folder")]
    #[diagnostic(code(circuit::output::is_folder), help("name a file in it"))]
    IsFolder { flag: &'static str, path: String },
}

/// The file writing `path` would change: symlinks followed (as [`super::write_atomic`] does), the
/// folder made canonical. `None` when the folder does not exist.
pub fn destination(path: &Path) -> Option<PathBuf> {
    let path = super::through_symlinks(path).ok()?;
    if let Ok(existing) = std::fs::canonicalize(&path) {
        return Some(existing);
    }
    let name = path.file_name()?;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(folder).ok()?.join(name))
}

/// Checks every output against the run's `inputs` (files, or folders whose files are all
/// inputs, such as a model folder), against each other, and that its folder exists and is
/// writable. Inputs that do not exist are skipped (their own stage reports them).
pub fn check_outputs(outputs: &[Output], inputs: &[PathBuf]) -> Result<(), OutputError> {
    let inputs: Vec<(PathBuf, &PathBuf)> = inputs
        .iter()
        .filter_map(|input| Some((std::fs::canonicalize(input).ok()?, input)))
        .collect();
    let mut seen: Vec<(PathBuf, &'static str)> = Vec::new();
    for output in outputs {
        let shown = output.path.display().to_string();
        if output.path.is_dir() {
            return Err(OutputError::IsFolder {
                flag: output.flag,
                path: shown,
            });
        }
        let Some(target) = destination(output.path) else {
            let folder = match output.path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.display().to_string(),
                _ => ".".to_string(),
            };
            return Err(OutputError::NoFolder {
                flag: output.flag,
                path: shown,
                folder,
            });
        };
        for (canonical, input) in &inputs {
            let hits = if canonical.is_dir() {
                target.parent() == Some(canonical.as_path()) && target.exists()
            } else {
                target == *canonical
            };
            if hits {
                return Err(OutputError::IsInput {
                    flag: output.flag,
                    path: shown,
                    input: input.display().to_string(),
                });
            }
        }
        if let Some((_, other)) = seen.iter().find(|(path, _)| *path == target) {
            return Err(OutputError::SameFile {
                flag: output.flag,
                other,
                path: shown,
            });
        }
        // An unnamed temporary file in the folder: the same permission check the write will
        // meet, with nothing left behind.
        let folder = target.parent().unwrap_or(Path::new("/"));
        if let Err(e) = tempfile::tempfile_in(folder) {
            return Err(OutputError::NotWritable {
                flag: output.flag,
                path: shown,
                reason: super::without_temporary_path(e).to_string(),
            });
        }
        seen.push((target, output.flag));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out<'a>(flag: &'static str, path: &'a Path) -> Output<'a> {
        Output { flag, path }
    }

    #[test]
    fn an_input_or_a_second_output_is_refused_however_it_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("x.circuit");
        std::fs::write(&input, "").unwrap();
        let inputs = vec![input.clone()];
        let dotted = dir
            .path()
            .join(".")
            .join("sub")
            .join("..")
            .join("x.circuit");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let e = check_outputs(&[out("-o", &dotted)], &inputs).unwrap_err();
        assert!(matches!(e, OutputError::IsInput { .. }), "{e}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            let e = check_outputs(&[out("--svg", &link)], &inputs).unwrap_err();
            assert!(matches!(e, OutputError::IsInput { .. }), "{e}");
        }
        let report = dir.path().join("r.json");
        let same = dir.path().join("sub/../r.json");
        let e = check_outputs(&[out("-o", &report), out("--svg", &same)], &inputs).unwrap_err();
        assert!(matches!(e, OutputError::SameFile { .. }), "{e}");
        assert!(check_outputs(&[out("-o", &report)], &inputs).is_ok());
    }

    #[test]
    fn a_model_folders_files_are_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        let inputs = vec![model.clone()];
        let e = check_outputs(&[out("-o", &model.join("config.json"))], &inputs).unwrap_err();
        assert!(matches!(e, OutputError::IsInput { .. }), "{e}");
        assert!(check_outputs(&[out("-o", &model.join("report.json"))], &inputs).is_ok());
        let e = check_outputs(&[out("-o", &model)], &inputs).unwrap_err();
        assert!(matches!(e, OutputError::IsFolder { .. }), "{e}");
        let e = check_outputs(&[out("-o", &dir.path().join("none/r.json"))], &inputs).unwrap_err();
        assert!(matches!(e, OutputError::NoFolder { .. }), "{e}");
    }
}
