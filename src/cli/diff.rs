//! `circuit diff A B`: what changed between two versions of a `.circuit` file (settings; per
//! circuit the heads, positions, MLPs and edges added or removed) and how the metrics moved.
//! A and B are files or git revisions (`HEAD~1:circuits/x.circuit`, read with `git show`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use circuit::model::ModelSource;
use circuit::report::diff::{circuit_changes, render, settings_changes};
use circuit::report::html::{diff_page, DiffPage};
use circuit::report::FileReport;
use circuit::resolve::{resolve_source, ResolveOptions, Resolved};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The old version: a file, or `REV:PATH` read with `git show`.
    pub a: String,
    /// The new version: a file, or `REV:PATH`.
    pub b: String,
    /// Compare the files only; do not evaluate them.
    #[arg(long)]
    pub no_eval: bool,
    /// Use this model folder instead of the files' `model` settings.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Write the diff to this file (atomically) instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Also write both versions side by side as a self-contained HTML page into this file
    /// (atomically).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub cache: super::cache::CacheArgs,
}

/// The text of a version and the folder its relative paths are taken from.
fn read_version(spec: &str) -> miette::Result<(String, PathBuf)> {
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| {
            miette::miette!(code = "circuit::diff::read", "cannot read {spec}: {e}")
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok((text, base));
    }
    let Some((rev, file)) = spec.split_once(':') else {
        return Err(miette::miette!(
            code = "circuit::diff::not_found",
            help =
                "pass a .circuit file or a git revision and path, e.g. HEAD~1:circuits/x.circuit",
            "{spec} is not a file"
        ));
    };
    let output = Command::new("git")
        .args(["show", &format!("{rev}:{file}")])
        .output()
        .map_err(|e| miette::miette!(code = "circuit::diff::git", "cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(miette::miette!(
            code = "circuit::diff::git",
            help = "the path after the colon is relative to the repository root (or start it with ./ for the current folder)",
            "git show {rev}:{file} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| miette::miette!(code = "circuit::diff::utf8", "{spec} is not UTF-8 text"))?;
    // Relative paths in the file are taken from its folder in the working tree: git reads
    // `REV:./x` relative to the current folder and `REV:x` relative to the repository root.
    let in_tree = match file.strip_prefix("./") {
        Some(relative) => std::env::current_dir().unwrap_or_default().join(relative),
        None => {
            let root = Command::new("git")
                .args(["rev-parse", "--show-toplevel"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
                .unwrap_or_default();
            root.join(file)
        }
    };
    let base = in_tree.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((text, base))
}

fn resolve_version(spec: &str, model: Option<&Path>) -> miette::Result<Resolved> {
    let (text, base) = read_version(spec)?;
    let options = ResolveOptions {
        model_override: model.map(|m| ModelSource::Dir(m.to_path_buf())),
    };
    resolve_source(
        spec,
        &text,
        &base,
        &circuit::resolve::RealEnvironment,
        &options,
    )
    .map_err(miette::Report::new)
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let a = resolve_version(&args.a, args.model.as_deref())?;
    let b = resolve_version(&args.b, args.model.as_deref())?;
    if let Some(path) = &args.html {
        let mut inputs = super::show::inputs_of(Path::new(&args.a), &a.file);
        inputs.extend(super::show::inputs_of(Path::new(&args.b), &b.file));
        let others: Vec<&Path> = args.output.iter().map(|p| p.as_path()).collect();
        super::show::check_output(path, &inputs, &others)?;
    }
    let settings = settings_changes(&a.file, &b.file);
    let changes = circuit_changes(&a.file, &b.file);
    let (before, after) = if args.no_eval {
        (Vec::new(), Vec::new())
    } else {
        let run_a = super::eval::evaluate(&a, &[], &args.cache)?;
        let run_b = super::eval::evaluate(&b, &[], &args.cache)?;
        (
            FileReport::new(&args.a, &a.file.settings, &run_a).circuits,
            FileReport::new(&args.b, &b.file.settings, &run_b).circuits,
        )
    };
    let text = render(&args.a, &args.b, &settings, &changes, &before, &after);
    if let Some(path) = &args.html {
        let (drawn_a, drawn_b) = (super::show::drawn(&a.file)?, super::show::drawn(&b.file)?);
        let side = super::show::diff_side;
        let page = diff_page(&DiffPage {
            a: side(&args.a, &a.file, &drawn_a, &before),
            b: side(&args.b, &b.file, &drawn_b, &after),
            settings: &settings,
            changes: &changes,
        });
        super::show::write_page(path, &page)?;
    }
    super::eval::emit(&text, args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
