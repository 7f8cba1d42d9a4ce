//! TEMPORARY SHIM — to be replaced by `crate::data::label_names` at merge.
//!
//! The tasks stage (src/data) owns the datasets and their label sets; it was being written in
//! parallel with the resolver. So that the `language` branch compiles and `circuit check` works
//! on the built-in datasets, this file answers the one question the resolver asks — which slot
//! labels every prompt of a dataset defines — for the built-in generator names the tasks issue
//! lists. At merge, [`label_names`]'s single caller (`RealEnvironment::dataset_labels` in
//! src/resolve/mod.rs) switches to `crate::data::label_names` and this file is deleted.

use crate::data::{DatasetSource, ParamValue};

/// The sequence-continuation generators: labels S1..S{len}.
const SEQCONT: &[&str] = &[
    "seqcont.numerals",
    "seqcont.number_words",
    "seqcont.months",
    "seqcont.days",
    "seqcont.letters",
];

/// Default sequence length of the sequence-continuation generators ("1 2 3 4" → " 5").
const DEFAULT_LEN: i64 = 4;

/// The slot labels every prompt of `source` defines (END and BOS are not included).
pub fn label_names(source: &DatasetSource) -> Result<Vec<String>, String> {
    match source {
        DatasetSource::Builtin { name, params } if SEQCONT.contains(&name.as_str()) => {
            let len = match params.get("len") {
                None => DEFAULT_LEN,
                Some(ParamValue::Int(n)) if (1..=64).contains(n) => *n,
                Some(other) => {
                    return Err(format!(
                        "`len` of {name} must be an integer from 1 to 64, not {other:?}"
                    ))
                }
            };
            Ok((1..=len).map(|i| format!("S{i}")).collect())
        }
        DatasetSource::Builtin { name, .. } if name == "ioi" => {
            Ok(vec!["IO".to_string(), "S1".to_string(), "S2".to_string()])
        }
        DatasetSource::Builtin { name, .. } => {
            let mut known: Vec<&str> = SEQCONT.to_vec();
            known.push("ioi");
            Err(format!(
                "unknown built-in dataset `{name}`; built-in datasets are {}",
                known.join(", ")
            ))
        }
        DatasetSource::File(path) => Err(format!(
            "reading labels from the JSONL file {} needs the tasks stage (not merged yet)",
            path.display()
        )),
    }
}
