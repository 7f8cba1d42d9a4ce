//! `circuit test`: every `expect` of the given `.circuit` files (directories searched
//! recursively) run as a test suite, one line per expectation, then `N passed, N failed`. A file
//! without expectations says so; files without any expectation at all are an error, not a pass.

use std::path::PathBuf;
use std::process::ExitCode;

use circuit::measure::expect::{check_file, circuits_to_run};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// .circuit files or directories (searched recursively for *.circuit).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub settings: super::settings::SettingArgs,
    #[command(flatten)]
    pub cache: super::cache::CacheArgs,
}

/// What one file gave: its expectation lines, or that it has none.
enum FileOutcome {
    Lines(Vec<(bool, String)>),
    NoExpectations,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    // Bad --set keys fail before any file is read.
    args.settings.options()?;
    let files = super::files::collect_files(&args.paths)?;
    let (mut passed, mut failed, mut without) = (0usize, 0usize, 0usize);
    for path in &files {
        let name = path.display().to_string();
        let outcome = (|| -> miette::Result<FileOutcome> {
            let resolved = super::eval::resolve(path, &args.settings)?;
            let names = circuits_to_run(&resolved.file)?;
            if names.is_empty() {
                return Ok(FileOutcome::NoExpectations);
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
            Ok(FileOutcome::Lines(lines))
        })();
        match outcome {
            Ok(FileOutcome::Lines(lines)) => {
                for (ok, line) in lines {
                    println!("{line}");
                    if ok {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
            Ok(FileOutcome::NoExpectations) => {
                println!("none {name}: no `expect` in this file, nothing tested");
                without += 1;
            }
            Err(report) => {
                // A file that cannot be evaluated fails as a whole; the others still run.
                println!("FAIL {name}: cannot evaluate (see below)");
                eprintln!("{report:?}");
                failed += 1;
            }
        }
    }
    let without_note = match without {
        0 => String::new(),
        1 => ", 1 file without expectations".to_string(),
        n => format!(", {n} files without expectations"),
    };
    println!("{passed} passed, {failed} failed{without_note}");
    if passed + failed == 0 {
        return Err(miette::miette!(
            code = "circuit::test::no_expectations",
            help = "add `expect faithfulness >= 0.8` (or another expectation) to a circuit; `circuit eval` prints the numbers without testing them",
            "nothing was tested: no expectation in the {} file{} given",
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
