//! `circuit`: circuit hypotheses as `.circuit` files, evaluated for faithfulness on a real
//! transformer on the CPU.
//!
//! The pipeline, one module per stage (a stage depends only on the stages before it):
//!
//! ```text
//! .circuit text ─syntax─▶ AST with spans ─resolve─▶ bound circuit ─plan─▶ per-prompt masks
//! masks ─ablate/model─▶ forward with interventions ─measure─▶ metrics ─report─▶ text, JSON, diff
//! ```
//!
//! `data` (datasets and labelled positions) and `model` (the transformer) are the two inputs
//! every stage after `syntax` is bound against.
//!
//! The command line (`src/cli/`, argument parsing and printing) belongs to the `circuit`
//! binary, not to this library; a command that evaluates circuits opens a
//! [`measure::Session`] (docs/architecture.md).

pub mod ablate;
pub mod attribute;
pub mod data;
pub mod discover;
pub mod exchange;
pub mod heads;
pub mod measure;
pub mod model;
pub mod plan;
pub mod report;
pub mod resolve;
pub mod scan;
pub mod syntax;
pub mod util;
