//! `align by label`: reference statistics matched to evaluated prompts by *slot* instead of by
//! token index.
//!
//! Why: under a real tokenizer, prompts from one template do not all have the same token length
//! (a name can be two tokens), so "the mean at token 7" mixes different words. Under label
//! alignment every token position `t` of a prompt is named by a [`Slot`] `(anchor, offset)`: the
//! anchor is the labelled token with the largest index `≤ t` (a label names its slot's last
//! token, as `S1` does in a circuit; END is a label too), and `offset = t − anchor`. Tokens
//! before the first label hang off the pseudo-anchor `start`. Several labels on one token: END
//! names it if it is among them (the metric is read there, so END lines up with END), otherwise
//! the label that sorts first by name (byte order). So "went to the store" after `S1` is
//! `S1+1 … S1+4` in every prompt, however many tokens the names took.
//!
//! The values themselves are laid out exactly as under position alignment (a leading source
//! axis, see [`super::reference`]): one source per distinct slot sequence of the evaluated
//! prompts (mean) or per distinct (partner, slot sequence) (resample), in that prompt's own token
//! positions, so the forward hooks read them unchanged.

use std::collections::{BTreeMap, HashMap};

use ndarray::{s, Array, Array2, Array3, Array4, ArrayD, ArrayView3, Axis, Dimension, RemoveAxis};

use super::reference::{
    accumulate, accumulate_edge_term, LayerActivations, ReferenceError, ReferenceNeeds,
    ReferenceValues,
};
use crate::data::slots::{PromptSlots, Slot};
use crate::data::{check_reference_lengths, Pairing};
use crate::resolve::bound::{AblationKind, HeadId};

/// The slots of every evaluated and every reference prompt: what `align by label` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelAlignment {
    pub evaluated: Vec<PromptSlots>,
    pub reference: Vec<PromptSlots>,
}

impl LabelAlignment {
    /// Every slot sequence as text, for the content keys of cached results.
    pub fn cache_text(&self) -> String {
        let mut text = String::from("align by label\n");
        for (set, prompts) in [
            ("evaluated", &self.evaluated),
            ("reference", &self.reference),
        ] {
            for p in prompts {
                let slots: Vec<String> = p.slots.iter().map(Slot::to_string).collect();
                text.push_str(&format!("{set} {}\n", slots.join(" ")));
            }
        }
        text
    }

    /// Checks, before any forward pass, that every evaluated token's slot is in the reference
    /// set (mean) or in its resample partner (resample); `with_pairs` (QK edges under
    /// edge-mean ablation): also every (query slot, key slot) pair, key at or before query.
    pub fn check(&self, kind: AblationKind, with_pairs: bool) -> Result<(), ReferenceError> {
        if kind == AblationKind::Zero {
            return Ok(());
        }
        SlotLayout::new(self, kind, with_pairs).map(|_| ())
    }
}

/// Where every reference occurrence is accumulated and which accumulated rows every evaluated
/// token reads.
///
/// A *row* is one accumulated value: under mean a slot (summed over every reference prompt that
/// has it), under resample one reference prompt's slot. A *pair row* is the same for a
/// (query row, key row) pair with key ≤ query, for the QK-edge terms `A[q,k]·v[k]`.
struct SlotLayout {
    /// Per reference prompt, per token: its row.
    row_of_ref: Vec<Vec<usize>>,
    /// Per row: how many reference tokens it sums.
    count: Vec<usize>,
    /// Per row: the token index shared by all its occurrences, `None` when they differ.
    index_of_row: Vec<Option<usize>>,
    /// `(query row, key row)` → pair row; filled only when edge terms are needed.
    pair_of: HashMap<(usize, usize), usize>,
    /// Per pair row: how many reference (query, key) token pairs it sums.
    pair_count: Vec<usize>,
    /// The distinct row sequences the evaluated prompts read: one source each.
    sources: Vec<Vec<usize>>,
    source_of_prompt: Vec<usize>,
}

impl SlotLayout {
    /// Per-slot sums `(slot rows, …)`, one array per layer → the means each source reads, laid
    /// out by its own tokens: `(S, T, …)` (zeros past a source's last token).
    fn means_by_token<D: Dimension + RemoveAxis>(
        &self,
        layers: &[Array<f64, D>],
        t_all: usize,
    ) -> Vec<Array<f32, D::Larger>> {
        layers
            .iter()
            .map(|sums| {
                let mut shape = vec![self.sources.len(), t_all];
                shape.extend_from_slice(&sums.shape()[1..]);
                let mut out = ArrayD::<f32>::zeros(shape);
                for (src, rows) in self.sources.iter().enumerate() {
                    let mut source = out.index_axis_mut(Axis(0), src);
                    for (t, &row) in rows.iter().enumerate() {
                        let c = 1.0 / self.count[row] as f64;
                        source
                            .index_axis_mut(Axis(0), t)
                            .zip_mut_with(&sums.index_axis(Axis(0), row), |o, &x| {
                                *o = (x * c) as f32
                            });
                    }
                }
                out.into_dimensionality()
                    .expect("one axis more than the sums")
            })
            .collect()
    }

    fn new(
        alignment: &LabelAlignment,
        kind: AblationKind,
        with_pairs: bool,
    ) -> Result<SlotLayout, ReferenceError> {
        let n_ref = alignment.reference.len();
        if n_ref == 0 {
            return Err(ReferenceError::Empty);
        }
        if kind == AblationKind::Resample {
            // Pairs are one-to-one; lengths may differ under label alignment.
            let count = |p: &[PromptSlots]| p.iter().map(|p| p.slots.len()).collect::<Vec<_>>();
            check_reference_lengths(
                Pairing::OneToOne,
                true,
                &count(&alignment.evaluated),
                &count(&alignment.reference),
                &|b| alignment.evaluated[b].name.clone(),
                &|r| alignment.reference[r].name.clone(),
            )?;
        }
        // Mean pools a slot over every reference prompt; resample keeps each prompt's apart.
        let pool = |r: usize| (kind == AblationKind::Resample).then_some(r);
        let mut row_index: HashMap<(Option<usize>, &Slot), usize> = HashMap::new();
        let mut count = Vec::new();
        let mut index_of_row: Vec<Option<usize>> = Vec::new();
        let mut row_of_ref = Vec::with_capacity(n_ref);
        for (r, prompt) in alignment.reference.iter().enumerate() {
            let mut rows = Vec::with_capacity(prompt.slots.len());
            for (t, slot) in prompt.slots.iter().enumerate() {
                let next = count.len();
                let row = *row_index.entry((pool(r), slot)).or_insert(next);
                if row == next {
                    count.push(0);
                    index_of_row.push(Some(t));
                }
                count[row] += 1;
                if index_of_row[row] != Some(t) {
                    index_of_row[row] = None;
                }
                rows.push(row);
            }
            row_of_ref.push(rows);
        }
        let mut pair_of = HashMap::new();
        let mut pair_count = Vec::new();
        if with_pairs {
            for rows in &row_of_ref {
                for (q, &row_q) in rows.iter().enumerate() {
                    for &row_k in &rows[..=q] {
                        let next = pair_count.len();
                        let pair = *pair_of.entry((row_q, row_k)).or_insert(next);
                        if pair == next {
                            pair_count.push(0);
                        }
                        pair_count[pair] += 1;
                    }
                }
            }
        }

        let mut sources: Vec<Vec<usize>> = Vec::new();
        let mut source_index: HashMap<Vec<usize>, usize> = HashMap::new();
        let mut source_of_prompt = Vec::with_capacity(alignment.evaluated.len());
        for (b, prompt) in alignment.evaluated.iter().enumerate() {
            let partner = b; // one-to-one, checked above
            let mut rows = Vec::with_capacity(prompt.slots.len());
            for (t, slot) in prompt.slots.iter().enumerate() {
                let row = row_index.get(&(pool(partner), slot)).ok_or_else(|| {
                    ReferenceError::SlotMissing {
                        prompt: prompt.name.clone(),
                        position: t,
                        slot: slot.to_string(),
                        lacking: match kind {
                            AblationKind::Resample => format!(
                                "its resample partner, {}, has no token at that slot",
                                alignment.reference[partner].name
                            ),
                            _ => format!(
                                "none of the {} reference prompts has a token at that slot",
                                n_ref
                            ),
                        },
                    }
                })?;
                rows.push(*row);
            }
            if with_pairs {
                for q in 0..rows.len() {
                    for k in 0..=q {
                        if !pair_of.contains_key(&(rows[q], rows[k])) {
                            return Err(ReferenceError::SlotPairMissing {
                                prompt: prompt.name.clone(),
                                query: q,
                                query_slot: prompt.slots[q].to_string(),
                                key: k,
                                key_slot: prompt.slots[k].to_string(),
                                reference: missing_in(kind, alignment, partner),
                            });
                        }
                    }
                }
            }
            let next = sources.len();
            let source = *source_index.entry(rows.clone()).or_insert(next);
            if source == next {
                sources.push(rows);
            }
            source_of_prompt.push(source);
        }
        Ok(SlotLayout {
            row_of_ref,
            count,
            index_of_row,
            pair_of,
            pair_count,
            sources,
            source_of_prompt,
        })
    }

    /// Whether `ref(z)[q] = Σ_{k≤q} ref(A[q,k]·v[k])` holds in algebra for a source at query
    /// `q`: every reference occurrence of the query's row sits at token `q` and has exactly the
    /// source's key rows before it. Always so when every prompt has the same labels at the same
    /// indices; where it fails, edge-mean ablation sums the terms (see [`ReferenceValues`]).
    fn edge_terms_sum_to_z(&self, rows: &[usize], q: usize) -> bool {
        let row_q = rows[q];
        self.index_of_row[row_q] == Some(q)
            && rows[..=q].iter().all(|&row_k| {
                self.pair_of
                    .get(&(row_q, row_k))
                    .is_some_and(|&p| self.pair_count[p] == self.count[row_q])
            })
    }
}

/// How a missing-pair error names where the pair was looked for.
fn missing_in(kind: AblationKind, alignment: &LabelAlignment, partner: usize) -> String {
    match kind {
        AblationKind::Resample => format!(
            "its resample partner, {}",
            alignment.reference[partner].name
        ),
        _ => format!("the {} reference prompts", alignment.reference.len()),
    }
}

/// Accumulates label-aligned reference values over batches of the reference forward pass, in
/// prompt order (sums in f64 in a fixed order, as [`super::ReferenceBuilder`] does, so that when
/// every prompt has its labels at the same indices the values are bit for bit the
/// position-aligned ones).
pub struct LabelReferenceBuilder {
    kind: AblationKind,
    needs: ReferenceNeeds,
    layout: SlotLayout,
    /// Reference prompts seen so far.
    seen: usize,
    /// Per layer, `(rows, H, d)` sums.
    z: Vec<Array3<f64>>,
    /// Per layer, `(rows, D)`.
    mlp_out: Vec<Array2<f64>>,
    /// Per layer, `(rows, H, D)`; empty unless path edges were asked for.
    head_out: Vec<Array3<f64>>,
    /// `(rows, D)`, with the head outputs.
    embed: Option<Array2<f64>>,
    /// Per head with QK edges, `(pair rows, d)`.
    edge_terms: BTreeMap<HeadId, Array2<f64>>,
}

impl LabelReferenceBuilder {
    /// Checks every slot (and slot pair, when edge terms are needed) before any forward pass.
    pub fn new(
        kind: AblationKind,
        needs: ReferenceNeeds,
        alignment: &LabelAlignment,
    ) -> Result<LabelReferenceBuilder, ReferenceError> {
        let layout = SlotLayout::new(alignment, kind, !needs.edge_heads.is_empty())?;
        Ok(LabelReferenceBuilder {
            kind,
            needs,
            layout,
            seen: 0,
            z: Vec::new(),
            mlp_out: Vec::new(),
            head_out: Vec::new(),
            embed: None,
            edge_terms: BTreeMap::new(),
        })
    }

    /// Adds the input embeddings `(b, T, D)` of the next batch, before [`Self::add_batch`] of
    /// the same batch; kept only with the head outputs (path edges).
    pub fn add_embed_batch(&mut self, embed: ArrayView3<f32>) {
        if self.kind == AblationKind::Zero || !self.needs.head_outputs {
            return;
        }
        let n_rows = self.layout.count.len();
        let sums = self
            .embed
            .get_or_insert_with(|| Array2::zeros((n_rows, embed.shape()[2])));
        for batch_row in 0..embed.shape()[0] {
            let rows = &self.layout.row_of_ref[self.seen + batch_row];
            for (t, &row) in rows.iter().enumerate() {
                accumulate(
                    sums.slice_mut(s![row, ..]),
                    embed.slice(s![batch_row, t, ..]),
                );
            }
        }
    }

    /// Adds one batch of reference prompts (the next ones in order), every layer.
    pub fn add_batch(&mut self, layers: &[LayerActivations]) {
        if self.kind == AblationKind::Zero || layers.is_empty() {
            return;
        }
        let n_rows = self.layout.count.len();
        if self.z.is_empty() {
            for acts in layers {
                let (_, _, h, d) = acts.z.dim();
                let d_model = acts.mlp_out.shape()[2];
                self.z.push(Array3::zeros((n_rows, h, d)));
                self.mlp_out.push(Array2::zeros((n_rows, d_model)));
                if self.needs.head_outputs {
                    self.head_out.push(Array3::zeros((n_rows, h, d_model)));
                }
            }
            for head in &self.needs.edge_heads {
                let d = layers[head.layer].z.shape()[3];
                self.edge_terms
                    .insert(*head, Array2::zeros((self.layout.pair_count.len(), d)));
            }
        }
        let n_batch = layers[0].z.shape()[0];
        for batch_row in 0..n_batch {
            let rows = &self.layout.row_of_ref[self.seen + batch_row];
            for (layer, acts) in layers.iter().enumerate() {
                for (t, &row) in rows.iter().enumerate() {
                    accumulate(
                        self.z[layer].slice_mut(s![row, .., ..]),
                        acts.z.slice(s![batch_row, t, .., ..]),
                    );
                    accumulate(
                        self.mlp_out[layer].slice_mut(s![row, ..]),
                        acts.mlp_out.slice(s![batch_row, t, ..]),
                    );
                    if self.needs.head_outputs {
                        accumulate(
                            self.head_out[layer].slice_mut(s![row, .., ..]),
                            acts.head_out().slice(s![batch_row, t, .., ..]),
                        );
                    }
                }
            }
            for (head, terms) in self.edge_terms.iter_mut() {
                for (q, &row_q) in rows.iter().enumerate() {
                    for (k, &row_k) in rows[..=q].iter().enumerate() {
                        let pair = self.layout.pair_of[&(row_q, row_k)];
                        accumulate_edge_term(
                            terms.slice_mut(s![pair, ..]),
                            &layers[head.layer],
                            batch_row,
                            head.head,
                            (q, k),
                        );
                    }
                }
            }
        }
        self.seen += n_batch;
    }

    /// The reference values, one source per distinct row sequence of the evaluated prompts,
    /// laid out in that sequence's token positions (means divided out, converted to f32).
    pub fn finish(self) -> ReferenceValues {
        if self.kind == AblationKind::Zero {
            return ReferenceValues::zero(self.layout.source_of_prompt.len());
        }
        let layout = &self.layout;
        let n_src = layout.sources.len();
        let t_all = layout.sources.iter().map(Vec::len).max().unwrap_or(0);
        // The same rounding as the position-aligned builder: sum · (1/n) in f64, then f32.
        let scale = |n: usize| 1.0 / n as f64;
        let z = layout.means_by_token(&self.z, t_all); // per layer (S, T, H, d)
        let mlp_out = layout.means_by_token(&self.mlp_out, t_all); // per layer (S, T, D)
        let head_out = layout.means_by_token(&self.head_out, t_all); // per layer (S, T, H, D)
        let embed = self
            .embed
            .map(|sums| layout.means_by_token(&[sums], t_all).remove(0)); // (S, T, D)
        let edge_terms: BTreeMap<HeadId, Array4<f32>> = self
            .edge_terms
            .iter()
            .map(|(head, sums)| {
                let d = sums.shape()[1];
                let mut out = Array4::<f32>::zeros((n_src, t_all, t_all, d));
                for (src, rows) in layout.sources.iter().enumerate() {
                    for (q, &row_q) in rows.iter().enumerate() {
                        for (k, &row_k) in rows[..=q].iter().enumerate() {
                            // Present: SlotLayout::new checked every pair when edges are needed.
                            let pair = layout.pair_of[&(row_q, row_k)];
                            let c = scale(layout.pair_count[pair]);
                            out.slice_mut(s![src, q, k, ..])
                                .zip_mut_with(&sums.slice(s![pair, ..]), |o, &x| {
                                    *o = (x * c) as f32
                                });
                        }
                    }
                }
                (*head, out)
            })
            .collect();
        let edge_base_is_ref_z = (!edge_terms.is_empty()).then(|| {
            let mut flags = Array2::from_elem((n_src, t_all), true);
            for (src, rows) in layout.sources.iter().enumerate() {
                for q in 0..rows.len() {
                    flags[[src, q]] = layout.edge_terms_sum_to_z(rows, q);
                }
            }
            flags
        });
        ReferenceValues::from_parts(
            self.kind,
            layout.source_of_prompt.clone(),
            z,
            mlp_out,
            head_out,
            embed,
            edge_terms,
            edge_base_is_ref_z,
        )
    }
}
