//! A `.circuit` file at a git revision (`circuit diff HEAD~1:c.circuit HEAD:c.circuit`), with the
//! files it refers to by relative path (dataset, reference dataset, model folder) read at the
//! same revision into a temporary folder, so that the old side is evaluated on the old data.
//! A referenced file the revision does not hold is refused, never taken from the working tree.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum RevisionError {
    #[error("cannot run git: {0}")]
    #[diagnostic(code(circuit::diff::git))]
    NoGit(String),
    #[error("git {args} failed: {message}")]
    #[diagnostic(
        code(circuit::diff::git),
        help("the path after the colon is relative to the repository root (or start it with ./ for the current folder)")
    )]
    Git { args: String, message: String },
    #[error("{spec} is not UTF-8 text")]
    #[diagnostic(code(circuit::diff::utf8))]
    NotUtf8 { spec: String },
    #[error("{spec} refers to {path}, which revision {rev} does not hold (untracked or not yet committed there)")]
    #[diagnostic(
        code(circuit::diff::not_in_revision),
        help("diff evaluates each revision on the files of that revision; commit the file, or compare working-tree files")
    )]
    NotInRevision {
        spec: String,
        rev: String,
        path: String,
    },
    #[error("{spec} refers to {path} inside the repository by an absolute path, which cannot be read at revision {rev}")]
    #[diagnostic(
        code(circuit::diff::absolute_path),
        help("refer to files of the repository by paths relative to the .circuit file")
    )]
    AbsoluteInRepository {
        spec: String,
        rev: String,
        path: String,
    },
    #[error("cannot write {path} read from revision {rev}: {source}")]
    #[diagnostic(code(circuit::diff::extract))]
    Extract {
        rev: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs git in `dir` (the working directory when `None`); stdout on success.
fn git(dir: Option<&Path>, args: &[&str]) -> Result<Vec<u8>, RevisionError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .args(args)
        .output()
        .map_err(|e| RevisionError::NoGit(e.to_string()))?;
    if !output.status.success() {
        return Err(RevisionError::Git {
            args: args.join(" "),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

/// `path` with `.` and `..` taken out lexically (it need not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A `.circuit` file read at a revision.
pub struct RevisionFile {
    pub rev: String,
    /// The text at the revision.
    pub text: String,
    /// The repository root (canonical).
    pub root: PathBuf,
    /// The file's folder, relative to the root.
    pub folder: PathBuf,
}

impl RevisionFile {
    /// `git show REV:FILE`: FILE relative to the repository root, or to the current folder when
    /// it starts with `./` (as git reads it).
    pub fn read(rev: &str, file: &str) -> Result<RevisionFile, RevisionError> {
        let spec = format!("{rev}:{file}");
        let text = String::from_utf8(git(None, &["show", &spec])?)
            .map_err(|_| RevisionError::NotUtf8 { spec: spec.clone() })?;
        let root = git(None, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(String::from_utf8_lossy(&root).trim());
        let root = std::fs::canonicalize(&root).unwrap_or(root);
        let in_repo = match file.strip_prefix("./") {
            Some(relative) => {
                let cwd = std::env::current_dir().unwrap_or_default();
                let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
                normalize(&cwd.join(relative))
                    .strip_prefix(&root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| PathBuf::from(relative))
            }
            None => normalize(Path::new(file)),
        };
        let folder = in_repo.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(RevisionFile {
            rev: rev.to_string(),
            text,
            root,
            folder,
        })
    }

    /// The file's folder in the working tree: where the first resolve takes relative paths
    /// from, to learn which files the file refers to.
    pub fn working_folder(&self) -> PathBuf {
        self.root.join(&self.folder)
    }

    /// Writes every input inside the repository (files or folders, as the first resolve found
    /// them from [`Self::working_folder`]) at this revision into `into`, mirroring the
    /// repository's layout; returns the folder to resolve the file from again, and notes for
    /// inputs outside the repository (read as they are now). `spec` names the file in errors.
    pub fn extract_inputs(
        &self,
        spec: &str,
        inputs: &[PathBuf],
        into: &Path,
    ) -> Result<(PathBuf, Vec<String>), RevisionError> {
        let mut notes = Vec::new();
        for input in inputs {
            let absolute = normalize(&self.working_folder().join(input));
            let Ok(relative) = absolute.strip_prefix(&self.root) else {
                notes.push(format!(
                    "{} is outside the repository: read as it is now, not at {}",
                    input.display(),
                    self.rev
                ));
                continue;
            };
            let relative = relative.to_string_lossy().into_owned();
            let listed = git(
                Some(&self.root),
                &[
                    "ls-tree",
                    "-r",
                    "--name-only",
                    "-z",
                    &self.rev,
                    "--",
                    &relative,
                ],
            )?;
            let files: Vec<String> = listed
                .split(|&b| b == 0)
                .filter(|name| !name.is_empty())
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect();
            if files.is_empty() {
                return Err(RevisionError::NotInRevision {
                    spec: spec.to_string(),
                    rev: self.rev.clone(),
                    path: input.display().to_string(),
                });
            }
            for name in files {
                let bytes = git(Some(&self.root), &["show", &format!("{}:{name}", self.rev)])?;
                let target = into.join(&name);
                let extract = |source| RevisionError::Extract {
                    rev: self.rev.clone(),
                    path: name.clone(),
                    source,
                };
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(extract)?;
                }
                std::fs::write(&target, bytes).map_err(extract)?;
            }
        }
        let folder = into.join(&self.folder);
        std::fs::create_dir_all(&folder).map_err(|source| RevisionError::Extract {
            rev: self.rev.clone(),
            path: self.folder.display().to_string(),
            source,
        })?;
        Ok((folder, notes))
    }

    /// After resolving again from the extracted folder: every input must be an extracted file
    /// or lie outside the repository. One that still points into the working tree was written
    /// as an absolute path, which cannot be read at the revision.
    pub fn check_inputs(
        &self,
        spec: &str,
        inputs: &[PathBuf],
        extracted: &Path,
    ) -> Result<(), RevisionError> {
        for input in inputs {
            let input = normalize(input);
            if !input.starts_with(extracted) && input.starts_with(&self.root) {
                return Err(RevisionError::AbsoluteInRepository {
                    spec: spec.to_string(),
                    rev: self.rev.clone(),
                    path: input.display().to_string(),
                });
            }
        }
        Ok(())
    }
}
