//! Reference values: what an ablated activation becomes.
//!
//! Every reference value is stored with a leading *source* axis `S`: under mean ablation there
//! is one source (the mean over the reference prompts, per token position); under resample
//! there is one source per reference prompt and each evaluated prompt reads its paired one;
//! under zero ablation nothing is stored and every replacement is 0. The forward hooks then
//! read one code path for all three kinds.

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;
use ndarray::{s, Array3, Array4, ArrayView3, ArrayView4, Axis};
use thiserror::Error;

use crate::resolve::bound::{AblationKind, HeadId};

/// One layer of the reference forward pass, as the reference statistics read it.
/// `R` reference prompts right-padded to `T` tokens.
pub struct LayerActivations<'a> {
    /// Per-head attention outputs before `W_O`, `(R, T, H, d)`.
    pub z: ArrayView4<'a, f32>,
    /// Attention pattern, `(R, H, T_q, T_k)`.
    pub pattern: ArrayView4<'a, f32>,
    /// Values indexed by query head (key/value heads expanded under GQA), `(R, T, H, d)`.
    pub v: ArrayView4<'a, f32>,
    /// MLP output, `(R, T, D)`.
    pub mlp_out: ArrayView3<'a, f32>,
    /// Each head's write to the residual stream `z_h · W_O^h` (no bias), `(R, T, H, D)`.
    pub head_out: ArrayView4<'a, f32>,
}

/// Errors building reference values.
#[derive(Debug, Error, Diagnostic)]
pub enum ReferenceError {
    #[error("the reference set is empty")]
    #[diagnostic(
        code(circuit::ablate::empty_reference),
        help("mean and resample ablation need at least one reference prompt")
    )]
    Empty,
    #[error("reference prompts have different token lengths: reference prompt {first_index} has {first_len} tokens, reference prompt {index} has {len}")]
    #[diagnostic(
        code(circuit::ablate::reference_lengths_differ),
        help("per-position reference statistics need every reference prompt to have the same number of tokens; use a reference set whose prompts tokenize to equal lengths, or align by label (`align label`, not implemented yet)")
    )]
    RefLengthsDiffer {
        first_index: usize,
        first_len: usize,
        index: usize,
        len: usize,
    },
    #[error("{prompt} has {len} tokens but its reference {reference} has {ref_len}")]
    #[diagnostic(
        code(circuit::ablate::reference_length_mismatch),
        help("reference statistics are taken at the same token position, so evaluated and reference prompts must have equal token lengths; use a reference set made from the same templates, or align by label (`align label`, not implemented yet)")
    )]
    LengthMismatch {
        prompt: String,
        len: usize,
        reference: String,
        ref_len: usize,
    },
    #[error("label alignment of reference statistics is not implemented")]
    #[diagnostic(
        code(circuit::ablate::label_alignment_unsupported),
        help("use position alignment (the default) with reference prompts of the same token length as the evaluated prompts")
    )]
    LabelAlignment,
}

/// What ablated activations are replaced by, for every evaluated prompt.
#[derive(Clone, Debug)]
pub struct ReferenceValues {
    pub kind: AblationKind,
    /// For each evaluated prompt, the source index it reads (see the module docs).
    source_of_prompt: Vec<usize>,
    /// Per layer, `(S, T, H, d)`.
    z: Vec<Array4<f32>>,
    /// Per layer, `(S, T, D)`.
    mlp_out: Vec<Array3<f32>>,
    /// Per layer, `(S, T, H, D)`; empty unless path edges were asked for.
    head_out: Vec<Array4<f32>>,
    /// Per head with QK edges, `(S, T_q, T_k, d)`: the term `A[q,k]·v[k]` per source.
    edge_terms: BTreeMap<HeadId, Array4<f32>>,
}

/// What the reference values must cover.
#[derive(Clone, Debug, Default)]
pub struct ReferenceNeeds {
    /// Heads whose per-(query, key) terms are needed (heads with QK edges).
    pub edge_heads: BTreeSet<HeadId>,
    /// Whether per-head outputs are needed (path edges).
    pub head_outputs: bool,
}

impl ReferenceValues {
    /// Zero ablation: every replacement is 0; no reference forward is needed.
    pub fn zero(n_prompts: usize) -> ReferenceValues {
        ReferenceValues {
            kind: AblationKind::Zero,
            source_of_prompt: vec![0; n_prompts],
            z: Vec::new(),
            mlp_out: Vec::new(),
            head_out: Vec::new(),
            edge_terms: BTreeMap::new(),
        }
    }

    /// Checks lengths and builds the reference values from a reference forward pass.
    ///
    /// `ref_lens[r]` is reference prompt `r`'s token count, `eval_lens[b]` evaluated prompt
    /// `b`'s; `describe_eval(b)` names an evaluated prompt in errors. Under resample, evaluated
    /// prompt `b` is paired with reference prompt `b mod R`.
    pub fn build(
        kind: AblationKind,
        layers: &[LayerActivations],
        ref_lens: &[usize],
        eval_lens: &[usize],
        describe_eval: &dyn Fn(usize) -> String,
        needs: &ReferenceNeeds,
    ) -> Result<ReferenceValues, ReferenceError> {
        if kind == AblationKind::Zero {
            return Ok(ReferenceValues::zero(eval_lens.len()));
        }
        let n_ref = ref_lens.len();
        if n_ref == 0 {
            return Err(ReferenceError::Empty);
        }
        let source_of_prompt: Vec<usize> = match kind {
            AblationKind::Mean => vec![0; eval_lens.len()],
            _ => (0..eval_lens.len()).map(|b| b % n_ref).collect(),
        };
        check_lengths(kind, ref_lens, eval_lens, describe_eval)?;

        let common_len = *ref_lens.iter().max().expect("non-empty");
        let mut values = ReferenceValues {
            kind,
            source_of_prompt,
            z: Vec::with_capacity(layers.len()),
            mlp_out: Vec::with_capacity(layers.len()),
            head_out: Vec::new(),
            edge_terms: BTreeMap::new(),
        };
        for (layer, acts) in layers.iter().enumerate() {
            let t = common_len;
            let z = acts.z.slice(s![.., ..t, .., ..]);
            let mlp_out = acts.mlp_out.slice(s![.., ..t, ..]);
            match kind {
                AblationKind::Mean => {
                    values.z.push(mean_over_prompts4(z));
                    values.mlp_out.push(mean_over_prompts3(mlp_out));
                    if needs.head_outputs {
                        values
                            .head_out
                            .push(mean_over_prompts4(acts.head_out.slice(s![.., ..t, .., ..])));
                    }
                }
                _ => {
                    values.z.push(z.to_owned());
                    values.mlp_out.push(mlp_out.to_owned());
                    if needs.head_outputs {
                        values
                            .head_out
                            .push(acts.head_out.slice(s![.., ..t, .., ..]).to_owned());
                    }
                }
            }
            for head in needs.edge_heads.iter().filter(|h| h.layer == layer) {
                let terms = edge_terms(acts, head.head, t, kind == AblationKind::Mean);
                values.edge_terms.insert(*head, terms);
            }
        }
        Ok(values)
    }

    /// Number of sources (1 for mean, R for resample, 0 for zero).
    pub fn n_sources(&self) -> usize {
        self.z.first().map(|z| z.shape()[0]).unwrap_or(0)
    }

    /// Whether this covers what a plan needs (edge heads and head outputs).
    pub fn covers(&self, needs: &ReferenceNeeds) -> bool {
        self.kind == AblationKind::Zero
            || (needs.edge_heads.iter().all(|h| self.edge_terms.contains_key(h))
                && (!needs.head_outputs || !self.head_out.is_empty()))
    }

    /// The replacement for head `head`'s `z` at position `t` of evaluated prompt `prompt`,
    /// added into `out` (`(d,)`).
    pub fn add_z(&self, layer: usize, prompt: usize, t: usize, head: usize, out: &mut [f64]) {
        if let Some(z) = self.z.get(layer) {
            let src = self.source_of_prompt[prompt];
            for (o, &x) in out.iter_mut().zip(z.slice(s![src, t, head, ..])) {
                *o += x as f64;
            }
        }
    }

    /// The replacement for the term `A[q,k]·v[k]` of `head`, added into `out` (`(d,)`).
    pub fn add_edge_term(&self, head: HeadId, prompt: usize, q: usize, k: usize, out: &mut [f64]) {
        if self.kind == AblationKind::Zero {
            return;
        }
        let terms = self.edge_terms.get(&head).unwrap_or_else(|| {
            panic!("reference edge terms of head {head} were not computed; ReferenceNeeds must list every head with QK edges")
        });
        let src = self.source_of_prompt[prompt];
        for (o, &x) in out.iter_mut().zip(terms.slice(s![src, q, k, ..])) {
            *o += x as f64;
        }
    }

    /// The replacement MLP output at `t` of evaluated prompt `prompt`, `(D,)`; `None` = zero.
    pub fn mlp_out(&self, layer: usize, prompt: usize, t: usize) -> Option<ndarray::ArrayView1<'_, f32>> {
        let src = self.source_of_prompt[prompt];
        self.mlp_out.get(layer).map(|m| m.slice(s![src, t, ..]))
    }

    /// The replacement output of head `head` at `t`, `(D,)`; `None` = zero.
    pub fn head_out(
        &self,
        layer: usize,
        prompt: usize,
        t: usize,
        head: usize,
    ) -> Option<ndarray::ArrayView1<'_, f32>> {
        if self.kind == AblationKind::Zero {
            return None;
        }
        let src = self.source_of_prompt[prompt];
        let out = self.head_out.get(layer).unwrap_or_else(|| {
            panic!("reference head outputs were not computed; ReferenceNeeds::head_outputs must be set for path edges")
        });
        Some(out.slice(s![src, t, head, ..]))
    }
}

fn check_lengths(
    kind: AblationKind,
    ref_lens: &[usize],
    eval_lens: &[usize],
    describe_eval: &dyn Fn(usize) -> String,
) -> Result<(), ReferenceError> {
    match kind {
        AblationKind::Zero => Ok(()),
        AblationKind::Mean => {
            let first_len = ref_lens[0];
            if let Some((index, &len)) = ref_lens.iter().enumerate().find(|(_, &l)| l != first_len) {
                return Err(ReferenceError::RefLengthsDiffer {
                    first_index: 0,
                    first_len,
                    index,
                    len,
                });
            }
            if let Some((b, &len)) = eval_lens.iter().enumerate().find(|(_, &l)| l != first_len) {
                return Err(ReferenceError::LengthMismatch {
                    prompt: describe_eval(b),
                    len,
                    reference: format!("set ({} prompts)", ref_lens.len()),
                    ref_len: first_len,
                });
            }
            Ok(())
        }
        AblationKind::Resample => {
            for (b, &len) in eval_lens.iter().enumerate() {
                let r = b % ref_lens.len();
                if ref_lens[r] != len {
                    return Err(ReferenceError::LengthMismatch {
                        prompt: describe_eval(b),
                        len,
                        reference: format!("prompt {r} (its resample partner)"),
                        ref_len: ref_lens[r],
                    });
                }
            }
            Ok(())
        }
    }
}

/// Mean over the prompt axis in f64, in a fixed order (deterministic across thread counts):
/// `(R, a, b, c)` → `(1, a, b, c)`.
fn mean_over_prompts4(x: ArrayView4<f32>) -> Array4<f32> {
    let n = x.shape()[0];
    let mut acc = ndarray::Array3::<f64>::zeros(x.raw_dim().remove_axis(Axis(0)));
    for prompt in x.outer_iter() {
        acc.zip_mut_with(&prompt, |a, &v| *a += v as f64);
    }
    acc.mapv(|a| (a / n as f64) as f32).insert_axis(Axis(0))
}

/// As [`mean_over_prompts4`], `(R, a, b)` → `(1, a, b)`.
fn mean_over_prompts3(x: ArrayView3<f32>) -> Array3<f32> {
    let n = x.shape()[0];
    let mut acc = ndarray::Array2::<f64>::zeros(x.raw_dim().remove_axis(Axis(0)));
    for prompt in x.outer_iter() {
        acc.zip_mut_with(&prompt, |a, &v| *a += v as f64);
    }
    acc.mapv(|a| (a / n as f64) as f32).insert_axis(Axis(0))
}

/// The terms `A[q,k]·v[k]` of one head, `(S, T_q, T_k, d)`: averaged over the reference prompts
/// (`S = 1`) when `mean`, else per reference prompt (`S = R`). Keys after the query are zero.
fn edge_terms(acts: &LayerActivations, head: usize, t: usize, mean: bool) -> Array4<f32> {
    let n_ref = acts.pattern.shape()[0];
    let d = acts.v.shape()[3];
    let n_src = if mean { 1 } else { n_ref };
    let mut acc = Array4::<f64>::zeros((n_src, t, t, d));
    for r in 0..n_ref {
        let src = if mean { 0 } else { r };
        for q in 0..t {
            for k in 0..=q {
                let a = acts.pattern[[r, head, q, k]] as f64;
                for i in 0..d {
                    acc[[src, q, k, i]] += a * acts.v[[r, k, head, i]] as f64;
                }
            }
        }
    }
    let scale = if mean { 1.0 / n_ref as f64 } else { 1.0 };
    acc.mapv(|x| (x * scale) as f32)
}
