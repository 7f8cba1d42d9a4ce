//! Errors of the evaluation stage that are not the data's, the model's or the ablation's (those
//! pass through with their own codes).

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum EvalError {
    /// `--circuit NAME` names no circuit of the file.
    #[error("no circuit named `{name}` in this file")]
    #[diagnostic(code(circuit::eval::unknown_circuit), help("{help}"))]
    UnknownCircuit {
        name: String,
        /// The closest name when one is close, and the names the file defines.
        help: String,
    },
    /// [`super::Evaluator::interrupted`] said stop (Ctrl-C in Python).
    #[error("the evaluation was interrupted")]
    #[diagnostic(code(circuit::eval::interrupted))]
    Interrupted,
}
