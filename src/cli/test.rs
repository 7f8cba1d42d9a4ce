//! `circuit test`: every `expect` of the given `.circuit` files (directories searched
//! recursively) run as a test suite, one line per expectation, then `N passed, N failed`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use circuit::measure::expect::{check_file, circuits_to_run};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// .circuit files or directories (searched recursively for *.circuit).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Use this model folder instead of each file's `model` setting.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub cache: super::cache::CacheArgs,
}

/// The `.circuit` files under `paths`, sorted, each once.
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
                    code = "circuit::test::read_dir",
                    "cannot read directory {}: {e}",
                    path.display()
                )
            })?;
        } else if path.exists() {
            files.insert(path.clone());
        } else {
            return Err(miette::miette!(
                code = "circuit::test::missing_path",
                help = "pass .circuit files or directories holding them",
                "{} does not exist",
                path.display()
            ));
        }
    }
    Ok(files.into_iter().collect())
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let files = collect_files(&args.paths)?;
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in &files {
        let name = path.display().to_string();
        let outcome = (|| -> miette::Result<Vec<(bool, String)>> {
            let resolved = super::eval::resolve(path, args.model.as_deref())?;
            let names = circuits_to_run(&resolved.file)?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let run = super::eval::evaluate(&resolved, &names, &args.cache)?;
            let lines = check_file(&resolved.file, &run.evaluation)
                .into_iter()
                .map(|c| {
                    let status = if c.outcome.passed { "ok  " } else { "FAIL" };
                    let line = format!(
                        "{status} {name} {}: {} {}",
                        c.circuit, c.expectation.text, c.outcome.measured
                    );
                    (c.outcome.passed, line)
                })
                .collect();
            Ok(lines)
        })();
        match outcome {
            Ok(lines) => {
                for (ok, line) in lines {
                    println!("{line}");
                    if ok {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            Err(report) => {
                // A file that cannot be evaluated fails as a whole; the others still run.
                println!("FAIL {name}: cannot evaluate (see below)");
                eprintln!("{report:?}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
