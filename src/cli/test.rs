//! `circuit test`: every `expect` of the given `.circuit` files (directories searched
//! recursively) run as a test suite, one line per expectation, then `N passed, N failed`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::measure::evaluate::Evaluation;
use crate::resolve::bound::{BoundFile, Comparison, Expectation, Metric, ValueExpr};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// .circuit files or directories (searched recursively for *.circuit).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Use this model folder instead of each file's `model` setting.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
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

/// Circuits an expression reads (other than `own`).
fn referenced(expr: &ValueExpr, out: &mut BTreeSet<String>) {
    match expr {
        ValueExpr::Number(_) => {}
        ValueExpr::Quantity { circuit, .. } => {
            if let Some(c) = circuit {
                out.insert(c.clone());
            }
        }
        ValueExpr::Add(a, b) | ValueExpr::Sub(a, b) | ValueExpr::Mul(a, b) => {
            referenced(a, out);
            referenced(b, out);
        }
        ValueExpr::Neg(a) => referenced(a, out),
    }
}

/// The circuits `circuit test` must evaluate: those with expectations and those they read.
/// An expectation naming a circuit the file does not define is an error.
pub fn circuits_to_run(file: &BoundFile) -> miette::Result<Vec<String>> {
    let mut names = BTreeSet::new();
    for circuit in &file.circuits {
        if circuit.expectations.is_empty() {
            continue;
        }
        names.insert(circuit.name.clone());
        for e in &circuit.expectations {
            let mut refs = BTreeSet::new();
            referenced(&e.lhs, &mut refs);
            referenced(&e.rhs, &mut refs);
            for r in refs {
                if !file.circuits.iter().any(|c| c.name == r) {
                    return Err(miette::miette!(
                        code = "circuit::test::unknown_circuit",
                        help = format!(
                            "the file defines: {}",
                            file.circuits
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        "circuit `{}`: `expect {}` refers to circuit `{r}`, which the file does not define",
                        circuit.name,
                        e.text
                    ));
                }
                names.insert(r);
            }
        }
    }
    // File order.
    Ok(file
        .circuits
        .iter()
        .filter(|c| names.contains(&c.name))
        .map(|c| c.name.clone())
        .collect())
}

/// The value of an expression for circuit `own`; `Err` names an undefined quantity.
pub fn value(
    expr: &ValueExpr,
    own: &str,
    evaluation: &Evaluation,
    metric: Metric,
) -> Result<f64, String> {
    Ok(match expr {
        ValueExpr::Number(x) => *x,
        ValueExpr::Quantity { circuit, quantity } => {
            let name = circuit.as_deref().unwrap_or(own);
            evaluation
                .quantity(name, *quantity, metric)
                .ok_or_else(|| format!("{quantity:?} of `{name}` is undefined (full and empty circuit agree, or the full model's metric is 0)"))?
        }
        ValueExpr::Add(a, b) => {
            value(a, own, evaluation, metric)? + value(b, own, evaluation, metric)?
        }
        ValueExpr::Sub(a, b) => {
            value(a, own, evaluation, metric)? - value(b, own, evaluation, metric)?
        }
        ValueExpr::Mul(a, b) => {
            value(a, own, evaluation, metric)? * value(b, own, evaluation, metric)?
        }
        ValueExpr::Neg(a) => -value(a, own, evaluation, metric)?,
    })
}

/// The outcome of one expectation.
pub struct Outcome {
    pub passed: bool,
    /// `(0.913)` or `(0.913 vs 0.903)` or `(undefined: ...)`.
    pub measured: String,
}

pub fn check(e: &Expectation, own: &str, evaluation: &Evaluation, metric: Metric) -> Outcome {
    let lhs = value(&e.lhs, own, evaluation, metric);
    let rhs = value(&e.rhs, own, evaluation, metric);
    match (lhs, rhs) {
        (Ok(l), Ok(r)) => {
            let passed = match e.comparison {
                Comparison::Lt => l < r,
                Comparison::Le => l <= r,
                Comparison::Gt => l > r,
                Comparison::Ge => l >= r,
            };
            let measured = match e.rhs {
                ValueExpr::Number(_) => format!("({l:.3})"),
                _ => format!("({l:.3} vs {r:.3})"),
            };
            Outcome { passed, measured }
        }
        (Err(m), _) | (_, Err(m)) => Outcome {
            passed: false,
            measured: format!("(undefined: {m})"),
        },
    }
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
            let run = super::eval::evaluate(&resolved, &names)?;
            let metric = resolved.file.settings.metric;
            let mut lines = Vec::new();
            for circuit in &resolved.file.circuits {
                for e in &circuit.expectations {
                    let o = check(e, &circuit.name, &run.evaluation, metric);
                    let status = if o.passed { "ok  " } else { "FAIL" };
                    lines.push((
                        o.passed,
                        format!(
                            "{status} {name} {}: {} {}",
                            circuit.name, e.text, o.measured
                        ),
                    ));
                }
            }
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
