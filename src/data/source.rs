//! Where a dataset comes from: a built-in generator with parameters, or a JSONL file.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A parameter value passed to a built-in generator (`n = 64`, `seed = 0`, `form = "template"`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

/// A dataset as a `.circuit` file or the CLI names it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum DatasetSource {
    /// A built-in generator by name (`seqcont.numerals`, `ioi`, ...) with its parameters.
    Builtin {
        name: String,
        params: BTreeMap<String, ParamValue>,
    },
    /// A JSONL file (docs/datasets.md), already made absolute or relative to the working
    /// directory by whoever read the path.
    File(PathBuf),
}
