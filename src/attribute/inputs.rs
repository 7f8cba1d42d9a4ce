//! What the scores read besides the gradients: each token's slot name, and the reference input
//! embedding `x̃` that `eap-ig` interpolates from.

use std::collections::BTreeMap;

use ndarray::{s, Array1, Array3};

use crate::ablate::LabelAlignment;
use crate::data::slots::Slot;
use crate::model::{Model, ModelError};
use crate::resolve::bound::AblationKind;

/// The slot of every token as reports name it (`END`, `S4`, `S1+1`, `start+2`).
pub fn slot_names(slots: &[Slot]) -> Vec<String> {
    slots.iter().map(Slot::to_string).collect()
}

/// `x̃` for every evaluated prompt, `(B, T, D)` (`T` the longest evaluated prompt; rows past a
/// prompt's length stay 0): the input embedding ablated the way the file ablates everything
/// else. Mean: the mean over the reference prompts of the embedding at the same token index
/// (under `align by label`: at the same slot); resample: the paired reference prompt's (prompt
/// `b` reads reference `b mod R`; by label at the same slot); zero: 0. The embeddings of the
/// reference prompts come from one cached forward over them (the engine's own embedding).
///
/// Lengths and slots are the ablation's to check (the session does before any forward); a
/// token without a reference value here keeps 0.
pub fn reference_embeddings(
    model: &Model,
    kind: AblationKind,
    eval_ids: &[Vec<u32>],
    reference_ids: &[Vec<u32>],
    alignment: Option<&LabelAlignment>,
) -> Result<Array3<f32>, ModelError> {
    let d_model = model.config.d_model;
    let seq = eval_ids.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Array3::<f32>::zeros((eval_ids.len(), seq, d_model)); // (B, T, D)
    if kind == AblationKind::Zero || reference_ids.is_empty() {
        return Ok(out);
    }
    // Every reference prompt's embedding, (T_r, D) each.
    // The embedding alone: no forward pass (it would cost a forward and its cache).
    let embeddings = model.input_embeddings(reference_ids)?;
    let n_ref = embeddings.len();
    match (kind, alignment) {
        (AblationKind::Mean, None) => {
            let len = embeddings[0].nrows();
            let mut sum = ndarray::Array2::<f64>::zeros((len, d_model)); // (T, D)
            for e in &embeddings {
                sum.zip_mut_with(&e.slice(s![..len, ..]), |s, &x| *s += x as f64);
            }
            let mean = sum.mapv(|s| (s / n_ref as f64) as f32);
            for (b, ids) in eval_ids.iter().enumerate() {
                let n = ids.len().min(len);
                out.slice_mut(s![b, ..n, ..])
                    .assign(&mean.slice(s![..n, ..]));
            }
        }
        (AblationKind::Mean, Some(alignment)) => {
            let mut sums: BTreeMap<&Slot, (Array1<f64>, usize)> = BTreeMap::new();
            for (e, prompt) in embeddings.iter().zip(&alignment.reference) {
                for (t, slot) in prompt.slots.iter().enumerate() {
                    let entry = sums
                        .entry(slot)
                        .or_insert_with(|| (Array1::zeros(d_model), 0));
                    entry.0.zip_mut_with(&e.row(t), |s, &x| *s += x as f64);
                    entry.1 += 1;
                }
            }
            for (b, prompt) in alignment.evaluated.iter().enumerate() {
                for (t, slot) in prompt.slots.iter().enumerate() {
                    if let Some((sum, n)) = sums.get(slot) {
                        out.slice_mut(s![b, t, ..])
                            .assign(&sum.mapv(|s| (s / *n as f64) as f32));
                    }
                }
            }
        }
        (_, None) => {
            for (b, ids) in eval_ids.iter().enumerate() {
                let partner = &embeddings[b % n_ref];
                let n = ids.len().min(partner.nrows());
                out.slice_mut(s![b, ..n, ..])
                    .assign(&partner.slice(s![..n, ..]));
            }
        }
        (_, Some(alignment)) => {
            for (b, prompt) in alignment.evaluated.iter().enumerate() {
                let partner = &alignment.reference[b % n_ref];
                let embedding = &embeddings[b % n_ref];
                for (t, slot) in prompt.slots.iter().enumerate() {
                    if let Some(t_ref) = partner.slots.iter().position(|s| s == slot) {
                        out.slice_mut(s![b, t, ..]).assign(&embedding.row(t_ref));
                    }
                }
            }
        }
    }
    Ok(out)
}
