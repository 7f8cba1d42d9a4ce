//! `expect` lines checked against an [`Evaluation`]: which circuits a file's expectations need,
//! the value of each side (the expression tree folded over measured numbers, see
//! [`ValueExpr::fold`]) and whether the comparison holds.

use std::collections::BTreeSet;

use miette::Diagnostic;
use thiserror::Error;

use super::evaluate::Evaluation;
use crate::resolve::bound::{BoundFile, Comparison, Expectation, Metric, ValueExpr};

#[derive(Debug, Error, Diagnostic)]
pub enum ExpectError {
    #[error("circuit `{circuit}`: `expect {text}` refers to circuit `{missing}`, which the file does not define")]
    #[diagnostic(
        code(circuit::test::unknown_circuit),
        help("the file defines: {defined}")
    )]
    UnknownCircuit {
        circuit: String,
        text: String,
        missing: String,
        defined: String,
    },
}

/// The circuits `circuit test` must evaluate: those with expectations and those they read, in
/// file order. An expectation naming a circuit the file does not define is an error.
pub fn circuits_to_run(file: &BoundFile) -> Result<Vec<String>, ExpectError> {
    let mut names = BTreeSet::new();
    for circuit in &file.circuits {
        if circuit.expectations.is_empty() {
            continue;
        }
        names.insert(circuit.name.clone());
        for e in &circuit.expectations {
            let mut refs = e.lhs.circuits();
            refs.extend(e.rhs.circuits());
            for r in refs {
                if !file.circuits.iter().any(|c| c.name == r) {
                    return Err(ExpectError::UnknownCircuit {
                        circuit: circuit.name.clone(),
                        text: e.text.clone(),
                        missing: r,
                        defined: file
                            .circuits
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                names.insert(r);
            }
        }
    }
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
    expr.fold(&mut |circuit, quantity| {
        let name = circuit.unwrap_or(own);
        evaluation.quantity(name, quantity, metric).ok_or_else(|| {
            format!("{quantity:?} of `{name}` is undefined (full and empty circuit agree, or the full model's metric is 0)")
        })
    })
}

/// The outcome of one expectation.
pub struct Outcome {
    pub passed: bool,
    /// `(0.913)` or `(0.913 vs 0.903)` or `(undefined: ...)`.
    pub measured: String,
}

/// One expectation of a file, checked.
pub struct Checked<'f> {
    /// The circuit the `expect` line belongs to.
    pub circuit: &'f str,
    pub expectation: &'f Expectation,
    pub outcome: Outcome,
}

/// Every expectation of `file`, in file order, checked against `evaluation` (which must hold
/// the circuits [`circuits_to_run`] names): what `circuit test` prints.
pub fn check_file<'f>(file: &'f BoundFile, evaluation: &Evaluation) -> Vec<Checked<'f>> {
    let metric = file.settings.metric;
    file.circuits
        .iter()
        .flat_map(|circuit| {
            circuit.expectations.iter().map(move |e| Checked {
                circuit: &circuit.name,
                expectation: e,
                outcome: check(e, &circuit.name, evaluation, metric),
            })
        })
        .collect()
}

/// Checks one expectation of circuit `own`.
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
