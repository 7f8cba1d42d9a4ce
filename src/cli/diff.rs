//! `circuit diff A B`: what changed between two versions of a `.circuit` file (settings; per
//! circuit the heads, positions, MLPs and edges added or removed) and how the metrics moved.
//! A and B are files or git revisions (`HEAD~1:circuits/x.circuit`, read with `git show`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::model::ModelSource;
use circuit::report::diff::{circuit_changes, render, settings_changes};
use circuit::report::html::{diff_page, DiffPage};
use circuit::report::FileReport;
use circuit::resolve::bound::BoundFile;
use circuit::resolve::revision::RevisionFile;
use circuit::resolve::{resolve_source, RealEnvironment, Resolved};
use circuit::util::outputs::{check_outputs, Output};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The old version: a file, or `REV:PATH` read with `git show`.
    pub a: String,
    /// The new version: a file, or `REV:PATH`.
    pub b: String,
    /// Compare the files only; do not evaluate them.
    #[arg(long)]
    pub no_eval: bool,
    /// `--model` and `--set` apply to both versions.
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
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

/// A version resolved, with the temporary folder holding the files it refers to at its
/// revision (kept alive while it is evaluated).
struct Version {
    resolved: Resolved,
    /// The file resolved from its folder in the working tree (absolute paths), so that settings
    /// compare by what the file says, not by where a revision's files were extracted to.
    as_written: BoundFile,
    _extracted: Option<tempfile::TempDir>,
}

/// A file as it is, or `REV:PATH` with its dataset and model files read at that revision.
fn resolve_version(spec: &str, settings: &super::settings::SettingArgs) -> miette::Result<Version> {
    let options = settings.options()?;
    let model_overridden = options.model_override.is_some();
    let resolve = |text: &str, base: &Path| {
        resolve_source(spec, text, base, &RealEnvironment, &options).map_err(miette::Report::new)
    };
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| {
            miette::miette!(code = "circuit::diff::read", "cannot read {spec}: {e}")
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolved = resolve(&text, &base)?;
        let absolute = std::fs::canonicalize(if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &base
        })
        .unwrap_or(base);
        return Ok(Version {
            as_written: resolve(&text, &absolute)?.file,
            resolved,
            _extracted: None,
        });
    }
    let Some((rev, file)) = spec.split_once(':') else {
        return Err(miette::miette!(
            code = "circuit::diff::not_found",
            help =
                "pass a .circuit file or a git revision and path, e.g. HEAD~1:circuits/x.circuit",
            "{spec} is not a file"
        ));
    };
    let version = RevisionFile::read(rev, file)?;
    // Resolved once from the working tree to learn which files it refers to, then again from
    // those files as the revision holds them.
    let first = resolve(&version.text, &version.working_folder())?;
    let inputs = file_inputs(&first, model_overridden);
    let extracted = tempfile::tempdir().map_err(|e| {
        miette::miette!(
            code = "circuit::diff::extract",
            "cannot make a temporary folder: {e}"
        )
    })?;
    let (base, notes) = version.extract_inputs(spec, &inputs, extracted.path())?;
    for note in notes {
        eprintln!("note: {note}");
    }
    let resolved = resolve(&version.text, &base)?;
    version.check_inputs(
        spec,
        &file_inputs(&resolved, model_overridden),
        extracted.path(),
    )?;
    Ok(Version {
        resolved,
        as_written: first.file,
        _extracted: Some(extracted),
    })
}

/// The files a resolved version reads; a `--model` folder is the user's, not the file's.
fn file_inputs(resolved: &Resolved, model_overridden: bool) -> Vec<PathBuf> {
    let settings = &resolved.file.settings;
    let mut inputs = settings.input_paths();
    if model_overridden {
        if let ModelSource::Dir(dir) = &settings.model {
            inputs.retain(|p| p != dir);
        }
    }
    inputs
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let a_version = resolve_version(&args.a, &args.settings)?;
    let b_version = resolve_version(&args.b, &args.settings)?;
    let (a, b) = (&a_version.resolved, &b_version.resolved);
    // Before any evaluation: the report and the page land on no input of either version (the
    // `.circuit` files, datasets, model files) nor on each other.
    let mut inputs: Vec<PathBuf> = [&args.a, &args.b]
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    inputs.extend(a.file.settings.input_paths());
    inputs.extend(b.file.settings.input_paths());
    let outputs: Vec<Output> = [("-o", &args.output), ("--html", &args.html)]
        .into_iter()
        .filter_map(|(flag, path)| path.as_deref().map(|path| Output { flag, path }))
        .collect();
    check_outputs(&outputs, &inputs)?;
    let settings = settings_changes(&a_version.as_written, &b_version.as_written);
    let changes = circuit_changes(&a.file, &b.file);
    let (before, after) = if args.no_eval {
        (Vec::new(), Vec::new())
    } else {
        let run_a = super::eval::evaluate(a, &[], &args.cache)?;
        let run_b = super::eval::evaluate(b, &[], &args.cache)?;
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
