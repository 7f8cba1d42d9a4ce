//! Head characterization (`circuit heads`): per attention head, what its attention does on the
//! file's dataset (previous-token, duplicate-token and induction scores; pure Rust) and, with the
//! cargo feature `linalg`, what its weights do (the OV circuit's eigenvalue copying score and
//! the QK circuit's singular values, through LAPACK). Definitions: docs/semantics.md, "Head
//! characterization". A stage beside `attribute`: it reads the model and the `Session`'s
//! prompts and evaluates no plan.

pub mod attention;
#[cfg(feature = "linalg")]
pub mod circuits;
pub mod report;

use crate::data::TokenizedPrompt;
use crate::measure::Session;
use crate::model::head_weights::uses_rotary;

pub use attention::AttentionScores;

/// Whether this build computes the weight-based columns (the `linalg` feature).
pub const HAS_LINALG: bool = cfg!(feature = "linalg");

/// Singular values of the QK circuit shown in the text table (JSON carries all `d`).
pub const QK_SHOWN: usize = 3;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HeadsError {
    #[error("LAPACK could not compute {what}: {reason}")]
    #[diagnostic(code(circuit::heads::lapack))]
    Lapack { what: String, reason: String },
}

/// Why a model with per-head q/k norms (Qwen3) has no QK column: the note the text and the JSON
/// print in its place (docs/semantics.md, "Head characterization").
pub const QK_NOT_DEFINED: &str = "not defined on this model: each head's q and k are RMSNormed on \
their own (Qwen3 q_norm/k_norm) before the scores, so a head's QK circuit is no bilinear form \
of the residual stream and has no singular values";

/// One head's row of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeadRow {
    pub layer: usize,
    pub head: usize,
    pub attention: AttentionScores,
    /// `None` without the `linalg` feature.
    #[cfg(feature = "linalg")]
    pub ov: circuits::OvCircuit,
    /// All `d` singular values, largest first; `None` where the QK circuit is no bilinear
    /// form ([`HeadsReport::qk_not_defined`] says why).
    #[cfg(feature = "linalg")]
    pub qk_singular_values: Option<Vec<f64>>,
}

/// What `circuit heads` prints for one file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeadsReport {
    pub provenance: crate::measure::file::Provenance,
    /// The distinct token ids of the dataset's prompts, answers and distractors: the tokens the
    /// OV circuit is restricted to.
    pub tokens: Vec<u32>,
    /// Whether the weight-based columns were computed (this build's `linalg` feature).
    pub linalg: bool,
    /// The model's positions are rotary: its QK singular values are those of the bilinear
    /// form at query-key distance 0 (docs/semantics.md).
    pub rotary: bool,
    /// Why no head has QK singular values ([`QK_NOT_DEFINED`], under per-head q/k norms); absent
    /// where they are defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qk_not_defined: Option<&'static str>,
    pub heads: Vec<HeadRow>,
}

/// The distinct ids, ascending, of every token of `prompts` (BOS included where the tokenizer
/// adds one) and of their answer and distractor tokens.
pub fn dataset_tokens(prompts: &[TokenizedPrompt]) -> Vec<u32> {
    let mut ids: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    for prompt in prompts {
        ids.extend(prompt.ids.iter().copied());
        ids.extend(prompt.answer_id);
        ids.extend(prompt.distractor_id);
    }
    ids.into_iter().collect()
}

/// Every head of the session's model, characterized on its clean prompts.
pub fn characterize(session: &Session) -> miette::Result<HeadsReport> {
    let model = session.model();
    // Per-head q/k norms (Qwen3): the attention summary reads patterns and the OV circuit
    // involves no q or k, so both stay defined; the QK circuit does not.
    let qk_not_defined = model.config.has_qk_norm().then_some(QK_NOT_DEFINED);
    let prompts: Vec<Vec<u32>> = session
        .clean_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    let attention = attention::attention_summary(model, &prompts)?;
    let tokens = dataset_tokens(session.clean_prompts());
    let mut heads = Vec::new();
    for (layer, layer_scores) in attention.into_iter().enumerate() {
        for (head, scores) in layer_scores.into_iter().enumerate() {
            heads.push(HeadRow {
                layer,
                head,
                attention: scores,
                #[cfg(feature = "linalg")]
                ov: circuits::ov_circuit(model, layer, head, &tokens)?,
                #[cfg(feature = "linalg")]
                qk_singular_values: match qk_not_defined {
                    None => Some(circuits::qk_singular_values(model, layer, head)?),
                    Some(_) => None,
                },
            });
        }
    }
    Ok(HeadsReport {
        provenance: session.provenance().clone(),
        tokens,
        linalg: HAS_LINALG,
        rotary: uses_rotary(model),
        qk_not_defined,
        heads,
    })
}
