//! Models by HuggingFace hub name (`gpt2`, `EleutherAI/pythia-70m`), found offline in the local
//! hub cache that `huggingface-cli download` / `hf download` fill. Nothing here touches the
//! network: a name the cache does not hold is an error saying where it looked and how to
//! download it.
//!
//! The cache layout (huggingface_hub's): `ROOT/models--ORG--NAME/refs/main` holds the revision
//! (a commit hash) that `main` pointed to when downloaded; `snapshots/REV/` holds the files, as
//! symlinks into `blobs/` (read through like any file).

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

/// A model named in a `.circuit` file or by `--model` that is neither a built-in model, nor a
/// folder, nor in the local hub cache.
#[derive(Clone, Debug, Error, Diagnostic, PartialEq, Eq)]
#[error("model `{spec}` not found: {looked}")]
#[diagnostic(code(circuit::model::not_found), help("{help}"))]
pub struct ModelNotFound {
    /// The name as written.
    pub spec: String,
    /// Where it was looked for, as a sentence.
    pub looked: String,
    pub help: String,
}

/// The hub cache folders to search, in order: `$HF_HUB_CACHE`, `$HF_HOME/hub`, then
/// `~/.cache/huggingface/hub` (each only when its variable is set; duplicates once).
pub fn cache_roots() -> Vec<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut roots: Vec<PathBuf> = [
        var("HF_HUB_CACHE").map(PathBuf::from),
        var("HF_HOME").map(|h| PathBuf::from(h).join("hub")),
        var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut seen = std::collections::HashSet::new();
    roots.retain(|root| seen.insert(root.clone()));
    roots
}

/// Whether `spec` can be a hub repository id: `NAME` or `ORG/NAME`, each part of ASCII letters,
/// digits, `-`, `_`, `.`, not starting with `.` (so `../models/gpt2` and `./x` are paths).
pub fn is_hub_name(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// The cache folder of repository `name` under `root`: `models--ORG--NAME`.
fn repo_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("models--{}", name.replace('/', "--")))
}

/// The snapshot folder of `name` in the first root that holds one: the revision `refs/main`
/// names, or, when there is no `refs/main`, the only snapshot (several without `refs/main` are
/// ambiguous, and skipped).
pub fn find_snapshot(name: &str, roots: &[PathBuf]) -> Option<PathBuf> {
    roots.iter().find_map(|root| {
        let repo = repo_dir(root, name);
        let snapshots = repo.join("snapshots");
        let by_ref = std::fs::read_to_string(repo.join("refs/main"))
            .ok()
            .map(|rev| snapshots.join(rev.trim()))
            .filter(|dir| dir.is_dir());
        by_ref.or_else(|| {
            let mut dirs = std::fs::read_dir(&snapshots)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir());
            let only = dirs.next()?;
            dirs.next().is_none().then_some(only)
        })
    })
}

/// Where model `spec` is: `dir` (the spec taken as a folder) when it exists, else its hub cache
/// snapshot when `spec` is a hub name held by one of `roots`, else the error naming both.
pub fn locate(spec: &str, dir: PathBuf, roots: &[PathBuf]) -> Result<PathBuf, ModelNotFound> {
    if dir.is_dir() {
        return Ok(dir);
    }
    let folder = format!("no folder {}", dir.display());
    if !is_hub_name(spec) {
        return Err(ModelNotFound {
            spec: spec.to_string(),
            looked: folder,
            help: "`model` takes a built-in model's name, a HuggingFace model folder (relative to the .circuit file; to the working directory for --model) or a hub name such as `gpt2` found in the local HuggingFace cache".into(),
        });
    }
    if let Some(snapshot) = find_snapshot(spec, roots) {
        return Ok(snapshot);
    }
    let searched: Vec<String> = roots
        .iter()
        .map(|r| repo_dir(r, spec).display().to_string())
        .collect();
    let looked = if searched.is_empty() {
        format!("{folder}, and no HuggingFace cache to look in (none of HF_HUB_CACHE, HF_HOME, HOME is set)")
    } else {
        format!(
            "{folder}, and not in the HuggingFace cache (looked for {})",
            searched.join(", ")
        )
    };
    Err(ModelNotFound {
        spec: spec.to_string(),
        looked,
        help: format!(
            "circuit never downloads: on a machine with network run `huggingface-cli download {spec}` (or `hf download {spec}`), then copy the cache here or set HF_HUB_CACHE to it; or pass the model's folder"
        ),
    })
}
