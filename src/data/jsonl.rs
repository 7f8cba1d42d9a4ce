//! The JSONL dataset format (docs/datasets.md): reading files and writing generated datasets.
//!
//! Spans in files are `[start, end)` in characters (Unicode code points, as Python's `str`
//! indexes), converted here to the byte spans Rust strings use. The template form
//! (`"template": "{S1} {S2}"`, `"fillers": {...}`) states no offsets at all.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::{DataError, PromptSet};
use super::record::{prompt_id, Dataset, Record, Span};

/// One line as written in a file; `reference` nests the paired reference prompt.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    prompt: Option<String>,
    slots: Option<BTreeMap<String, [usize; 2]>>,
    template: Option<String>,
    fillers: Option<BTreeMap<String, String>>,
    answer: Option<String>,
    distractor: Option<String>,
    reference: Option<Box<RawRecord>>,
    set: Option<String>,
}

/// A prompt with byte-span slots built from a template and its fillers: `{NAME}` is replaced by
/// filler `NAME` and labels its span; `{{` and `}}` stand for literal braces.
pub fn fill_template(
    template: &str,
    fillers: &BTreeMap<String, String>,
) -> Result<(String, BTreeMap<String, Span>), String> {
    let mut prompt = String::new();
    let mut slots = BTreeMap::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        prompt.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            prompt.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(
                "template has a `}` without its `{` (write `}}` for a literal brace)".into(),
            );
        }
        let close = tail
            .find('}')
            .ok_or("template has a `{` without its `}` (write `{{` for a literal brace)")?;
        let name = &tail[1..close];
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(format!(
                "template slot `{{{name}}}` is not a name (letters, digits, `_`)"
            ));
        }
        let filler = fillers
            .get(name)
            .ok_or_else(|| format!("template slot `{{{name}}}` has no filler"))?;
        let start = prompt.len();
        prompt.push_str(filler);
        if slots
            .insert(name.to_string(), Span::new(start, prompt.len()))
            .is_some()
        {
            return Err(format!(
                "template slot `{{{name}}}` appears twice; a label names one span (use {name}_2 ...)"
            ));
        }
        rest = &tail[close + 1..];
    }
    prompt.push_str(rest);
    if let Some(unused) = fillers.keys().find(|k| !slots.contains_key(*k)) {
        return Err(format!(
            "filler `{unused}` has no `{{{unused}}}` in the template"
        ));
    }
    Ok((prompt, slots))
}

/// Turns one raw record of `set` into a [`Record`]; `base` is the clean record a nested reference
/// inherits its template, answer and distractor from.
fn build_record(
    raw: &RawRecord,
    set: PromptSet,
    base: Option<(&RawRecord, &Record)>,
) -> Result<Record, String> {
    let (prompt, slots) = match (&raw.prompt, &raw.template) {
        (Some(_), Some(_)) => {
            return Err(
                "give either `prompt` with `slots` or `template` with `fillers`, not both".into(),
            )
        }
        (Some(prompt), None) => {
            if raw.fillers.is_some() {
                return Err("`fillers` belong to a `template`".into());
            }
            let mut slots = BTreeMap::new();
            for (label, [start, end]) in raw.slots.iter().flatten() {
                let span = Span::from_chars(prompt, *start, *end)
                    .map_err(|m| format!("slot `{label}` {m}"))?;
                slots.insert(label.clone(), span);
            }
            (prompt.clone(), slots)
        }
        (None, template) => {
            if raw.slots.is_some() {
                return Err(
                    "`slots` belong to a `prompt`; a template's slots follow from its fillers"
                        .into(),
                );
            }
            let template = template
                .as_deref()
                .or(base.and_then(|(b, _)| b.template.as_deref()))
                .ok_or("a record needs `prompt` (with `slots`) or `template` (with `fillers`)")?;
            let fillers = raw.fillers.clone().unwrap_or_default();
            fill_template(template, &fillers)?
        }
    };
    // A clean prompt's answer and distractor are read by the metric; a reference prompt's by
    // no setting, so it may leave them out (a paired one inherits the clean record's).
    let inherited = |own: &Option<String>, what: &str, pick: fn(&Record) -> &Option<String>| {
        let value = own
            .clone()
            .or_else(|| base.and_then(|(_, r)| pick(r).clone()));
        match value {
            None if set == PromptSet::Clean => Err(format!(
                "missing `{what}` (the metric reads the {what}'s logit at END of every evaluated prompt; reference prompts need none)"
            )),
            value => Ok(value),
        }
    };
    Ok(Record {
        prompt,
        slots,
        answer: inherited(&raw.answer, "answer", |r| &r.answer)?,
        distractor: inherited(&raw.distractor, "distractor", |r| &r.distractor)?,
    })
}

/// Byte offset and length (without its newline) of each line of `text`, as `str::lines` splits.
fn line_extents(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for piece in text.split_inclusive('\n') {
        let content = piece.strip_suffix('\n').unwrap_or(piece);
        let content = content.strip_suffix('\r').unwrap_or(content);
        out.push((start, content.len()));
        start += piece.len();
    }
    out
}

/// The error for line `line` (one-based) of a file, pointing at byte `column` (one-based) of
/// the line when known, else at the whole line.
fn line_error(
    text: &str,
    path: &Path,
    line: usize,
    column: Option<usize>,
    message: String,
) -> DataError {
    let (start, len) = line_extents(text)
        .get(line - 1)
        .copied()
        .unwrap_or((text.len(), 0));
    let at = match column {
        Some(c) if c >= 1 && c - 1 < len => (start + c - 1, 1).into(),
        _ => (start, len).into(),
    };
    DataError::Jsonl {
        path: path.to_path_buf(),
        line,
        message,
        source_code: std::sync::Arc::new(miette::NamedSource::new(
            path.display().to_string(),
            text.to_string(),
        )),
        at,
    }
}

/// A serde_json message without its " at line L column C" suffix.
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

/// Parses a JSONL dataset; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Dataset, DataError> {
    // A byte order mark (as some Windows editors write) is not part of the first record.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut clean = Vec::new();
    let mut paired_reference = Vec::new();
    let mut unpaired_reference = Vec::new();
    // Line numbers of the first clean record with and without a paired reference, to report
    // a file that mixes both.
    let (mut first_paired, mut first_unpaired) = (None, None);
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let err = |message: String| line_error(text, path, line_number, None, message);
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| {
            let column = (e.line() == 1).then_some(e.column());
            line_error(
                text,
                path,
                line_number,
                column,
                // serde_json counts lines within this line; the report gives the file's.
                format!("not a dataset record: {}", without_position(&e)),
            )
        })?;
        let set = match raw.set.as_deref().unwrap_or("clean") {
            "clean" => PromptSet::Clean,
            "reference" => PromptSet::Reference,
            other => {
                return Err(err(format!(
                    "`set` is {other:?}; it is \"clean\" (the default) or \"reference\""
                )))
            }
        };
        let record = build_record(&raw, set, None).map_err(&err)?;
        match set {
            PromptSet::Clean => {
                if let Some(reference) = &raw.reference {
                    if reference.reference.is_some() || reference.set.is_some() {
                        return Err(err(
                            "a `reference` holds no `reference` or `set` of its own".into(),
                        ));
                    }
                    let paired =
                        build_record(reference, PromptSet::Reference, Some((&raw, &record)))
                            .map_err(|m| err(format!("reference: {m}")))?;
                    paired_reference.push((line_number, paired));
                    first_paired.get_or_insert(line_number);
                } else {
                    first_unpaired.get_or_insert(line_number);
                }
                clean.push((line_number, record));
            }
            PromptSet::Reference => {
                if raw.reference.is_some() {
                    return Err(err(
                        "a reference prompt holds no `reference` of its own".into()
                    ));
                }
                unpaired_reference.push((line_number, record));
            }
        }
    }
    if let (Some(p), Some(u)) = (first_paired, first_unpaired) {
        return Err(line_error(
            text,
            path,
            p.max(u),
            None,
            format!(
                "line {p} has a paired `reference` but line {u} has none; pair every prompt or none"
            ),
        ));
    }
    if !paired_reference.is_empty() && !unpaired_reference.is_empty() {
        return Err(line_error(
            text,
            path,
            unpaired_reference[0].0,
            None,
            "`set: \"reference\"` lines cannot be mixed with paired `reference` records".into(),
        ));
    }
    if clean.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let paired = !paired_reference.is_empty();
    let reference = if paired {
        paired_reference
    } else {
        unpaired_reference
    };
    // Validate per record so an error names the line as well as the prompt.
    for (set, records) in [
        (PromptSet::Clean, &clean),
        (PromptSet::Reference, &reference),
    ] {
        for (index, (line, record)) in records.iter().enumerate() {
            record
                .validate(&prompt_id(set, index, record))
                .map_err(|e| line_error(text, path, *line, None, e.to_string()))?;
        }
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    Ok(Dataset {
        name,
        clean: clean.into_iter().map(|(_, r)| r).collect(),
        reference: reference.into_iter().map(|(_, r)| r).collect(),
        paired,
    })
}

/// Reads a JSONL dataset file.
pub fn read(path: &Path) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// One record in the canonical span form: prompt, slots in characters (ordered by where they
/// start), answer, distractor.
fn record_json(record: &Record) -> Map<String, Value> {
    let mut slots = Map::new();
    for label in record.labels_in_order() {
        let (start, end) = record.slots[&label].to_chars(&record.prompt);
        slots.insert(label, json!([start, end]));
    }
    let mut object = Map::new();
    object.insert("prompt".into(), json!(record.prompt));
    object.insert("slots".into(), Value::Object(slots));
    for (key, value) in [
        ("answer", &record.answer),
        ("distractor", &record.distractor),
    ] {
        if let Some(value) = value {
            object.insert(key.into(), json!(value));
        }
    }
    object
}

/// The dataset as JSONL in the canonical span form, one clean record per line. Paired
/// references are nested (their answer and distractor only when they differ from the clean
/// record's); unpaired ones follow as `"set": "reference"` lines. [`parse`] reads it back to the
/// same dataset.
pub fn write(dataset: &Dataset) -> String {
    let mut out = String::new();
    let mut push = |object: Map<String, Value>| {
        out.push_str(&Value::Object(object).to_string());
        out.push('\n');
    };
    for (index, record) in dataset.clean.iter().enumerate() {
        let mut object = record_json(record);
        if dataset.paired {
            let reference = &dataset.reference[index];
            let mut nested = record_json(reference);
            if reference.answer == record.answer {
                nested.remove("answer");
            }
            if reference.distractor == record.distractor {
                nested.remove("distractor");
            }
            object.insert("reference".into(), Value::Object(nested));
        }
        push(object);
    }
    if !dataset.paired {
        for reference in &dataset.reference {
            let mut object = record_json(reference);
            object.insert("set".into(), json!("reference"));
            push(object);
        }
    }
    out
}
