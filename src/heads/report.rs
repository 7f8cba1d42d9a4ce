//! `circuit heads` as text (a table, one row per head, with the definitions above it) and as
//! JSON (every number). Computes nothing; a build without the `linalg` feature says in both that
//! the OV and QK columns were not computed, and a model with per-head q/k norms (Qwen3) why it
//! has no QK column, instead of leaving them blank.

use super::HeadsReport;
use crate::report::short;

/// What a build without the feature prints where the weight-based columns would be.
pub const LINALG_MISSING: &str =
    "not computed: this build has no LAPACK; build with `--features linalg` (docs/semantics.md)";

pub fn to_text(file: &str, report: &HeadsReport) -> String {
    let p = &report.provenance;
    let (prev_queries, repeated_queries) = report
        .heads
        .first()
        .map(|h| {
            (
                h.attention.previous_token_queries,
                h.attention.repeated_token_queries,
            )
        })
        .unwrap_or_default();
    let mut out = format!("{file}\n");
    let mut row = |label: &str, value: String| out.push_str(&format!("  {label:<11} {value}\n"));
    row(
        "model",
        format!("{} (weights sha256 {})", p.model, short(&p.model_sha256)),
    );
    row(
        "dataset",
        format!(
            "{} ({} prompts, sha256 {})",
            p.dataset,
            p.n_prompts,
            short(&p.dataset_sha256)
        ),
    );
    row(
        "attention",
        format!("the full model's patterns; prev over {prev_queries} queries (q >= 1),"),
    );
    row(
        "",
        format!(
            "dup and induct over the {repeated_queries} queries whose token occurs earlier in \
             the prompt"
        ),
    );
    if repeated_queries == 0 {
        row(
            "",
            "dup and induct undefined (n/a): no prompt of the dataset repeats a token".to_string(),
        );
    }
    if report.linalg {
        row(
            "OV",
            format!(
                "eigenvalues of W_E·γ·W_V·W_O·γ_f·W_U on the dataset's {} tokens;",
                report.tokens.len()
            ),
        );
        row(
            "",
            "copying = Σ Re λ / Σ |λ|, pos = share of eigenvalues with Re λ > 0".to_string(),
        );
        let distance = if report.rotary {
            " at query-key distance 0 (rotary positions)"
        } else {
            ""
        };
        if report.qk_not_defined.is_none() {
            row(
                "QK",
                format!("top singular values of γ·W_Q·(γ·W_K)ᵀ/√d in the residual basis{distance}"),
            );
        }
    } else {
        row("OV, QK", LINALG_MISSING.to_string());
    }
    if let Some(note) = report.qk_not_defined {
        // The column left out, and why (never a silent blank).
        for (i, line) in wrapped(note, 80).into_iter().enumerate() {
            row(if i == 0 { "QK" } else { "" }, line);
        }
    }
    out.push('\n');

    let mut header = format!("{:<7} {:>7} {:>7} {:>7}", "head", "prev", "dup", "induct");
    if report.linalg {
        header.push_str(&format!(" {:>8} {:>6}", "copying", "pos"));
        if report.qk_not_defined.is_none() {
            for i in 1..=super::QK_SHOWN {
                header.push_str(&format!(" {:>8}", format!("qk σ{i}")));
            }
        }
    }
    out.push_str(header.trim_end());
    out.push('\n');
    for head in &report.heads {
        let a = &head.attention;
        let line = format!(
            "{:<7} {:>7} {:>7} {:>7}{}",
            format!("{}.{}", head.layer, head.head),
            fixed(a.previous_token, 4),
            fixed(a.duplicate_token, 4),
            fixed(a.induction, 4),
            weight_columns(head),
        );
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Every number: the report as serde writes it, plus, without the feature, a note where the
/// weight-based fields would be.
pub fn to_json(file: &str, report: &HeadsReport) -> String {
    let mut value = serde_json::json!({ "file": file });
    let body = serde_json::to_value(report).expect("a report serializes");
    if let (Some(out), serde_json::Value::Object(fields)) = (value.as_object_mut(), body) {
        out.extend(fields);
        if !report.linalg {
            out.insert("ov_qk".to_string(), LINALG_MISSING.into());
        }
    }
    let mut text = serde_json::to_string_pretty(&value).expect("JSON");
    text.push('\n');
    text
}

/// The OV and QK columns of one row.
#[cfg(feature = "linalg")]
fn weight_columns(head: &super::HeadRow) -> String {
    let mut columns = format!(
        " {:>8} {:>6}",
        fixed(head.ov.copying, 4),
        fixed(Some(head.ov.positive_share), 3)
    );
    // No QK columns where the circuit is no bilinear form (the header says why).
    if let Some(sigma) = &head.qk_singular_values {
        for i in 0..super::QK_SHOWN {
            columns.push_str(&format!(" {:>8}", fixed(sigma.get(i).copied(), 3)));
        }
    }
    columns
}

/// Without the feature there are none (the header says why).
#[cfg(not(feature = "linalg"))]
fn weight_columns(_head: &super::HeadRow) -> String {
    String::new()
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

fn fixed(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) => format!("{x:.digits$}"),
        None => "n/a".to_string(),
    }
}
