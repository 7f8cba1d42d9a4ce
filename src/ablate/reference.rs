//! Reference values: what an ablated activation becomes.
//!
//! Every reference value is stored with a leading *source* axis `S`: under mean ablation there
//! is one source (the mean over the reference prompts, per token position); under resample
//! there is one source per reference prompt and each evaluated prompt reads its paired one;
//! under zero ablation nothing is stored and every replacement is 0. The forward hooks then
//! read one code path for all three kinds. Under `align by label` ([`super::align`]) the
//! sources are per distinct slot layout of the evaluated prompts instead, in the same shape.

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;
use ndarray::{
    s, Array2, Array3, Array4, ArrayView, ArrayView3, ArrayView4, ArrayViewMut, ArrayViewMut1,
    Dimension,
};
use thiserror::Error;

use crate::data::{check_reference_lengths, DataError, Pairing};
use crate::resolve::bound::{AblationKind, HeadId};

/// One layer of the reference forward pass, as the reference statistics read it.
/// `R` reference prompts right-padded to `T` tokens. The pass keeps only what the
/// [`ReferenceNeeds`] read ([`ReferenceNeeds::cache_selection`]); reading a part it did not
/// keep is a bug, and panics.
pub struct LayerActivations<'a> {
    /// Per-head attention outputs before `W_O`, `(R, T, H, d)`.
    pub z: ArrayView4<'a, f32>,
    /// Attention pattern, `(R, H, T_q, T_k)`: layers with a head in `edge_heads`.
    pub pattern: Option<ArrayView4<'a, f32>>,
    /// Values indexed by query head (key/value heads expanded under GQA), `(R, T, H, d)`:
    /// layers with a head in `edge_heads`.
    pub v: Option<ArrayView4<'a, f32>>,
    /// MLP output, `(R, T, D)`.
    pub mlp_out: ArrayView3<'a, f32>,
    /// Each head's write to the residual stream `z_h · W_O^h` (no bias), `(R, T, H, D)`: with
    /// `head_outputs`.
    pub head_out: Option<ArrayView4<'a, f32>>,
}

impl LayerActivations<'_> {
    /// The pattern and values of a layer with QK-edge heads.
    fn attention(&self) -> (&ArrayView4<'_, f32>, &ArrayView4<'_, f32>) {
        match (&self.pattern, &self.v) {
            (Some(pattern), Some(v)) => (pattern, v),
            _ => panic!("the reference pass kept no attention pattern of a layer with QK-edge heads; ReferenceNeeds::cache_selection must list it"),
        }
    }

    /// Each head's write to the residual stream, `(R, T, H, D)`.
    pub(super) fn head_out(&self) -> &ArrayView4<'_, f32> {
        self.head_out.as_ref().unwrap_or_else(|| {
            panic!("the reference pass kept no head outputs; ReferenceNeeds::cache_selection must ask for them with head_outputs")
        })
    }
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
    /// Reference prompts that break the one reference rule ([`check_reference_lengths`]).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error("{prompt}: token {position} is at slot {slot} under `align by label`, but {lacking}")]
    #[diagnostic(
        code(circuit::ablate::slot_missing_from_reference),
        help("under `align by label` a token reads the reference value of its slot (the nearest label at or before it, plus the offset from that label; `start` before the first label); use reference prompts built from the same templates, so that every slot of an evaluated prompt occurs in them")
    )]
    SlotMissing {
        prompt: String,
        position: usize,
        slot: String,
        /// Says which reference prompts lack the slot ("none of the 8 reference prompts has
        /// a token at that slot").
        lacking: String,
    },
    #[error("{prompt}: query token {query} (slot {query_slot}) and key token {key} (slot {key_slot}) never occur together in {reference} (key at or before query), so their QK-edge term has no reference value under `align by label`")]
    #[diagnostic(
        code(circuit::ablate::slot_pair_missing_from_reference),
        help("edge-mean ablation of QK edges needs each (query slot, key slot) pair of the evaluated prompts in one reference prompt, key at or before query; use reference prompts built from the same templates, or `ablate edges by knockout`")
    )]
    SlotPairMissing {
        prompt: String,
        query: usize,
        query_slot: String,
        key: usize,
        key_slot: String,
        reference: String,
    },
}

/// What ablated activations are replaced by, for every evaluated prompt.
#[derive(Clone, Debug, PartialEq)]
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
    /// The input embedding `(S, T, D)`, stored with the head outputs (path edges): what an
    /// edge-complete circuit's inputs read where no `embed` edge is kept.
    embed: Option<Array3<f32>>,
    /// Per head with QK edges, `(S, T_q, T_k, d)`: the term `A[q,k]·v[k]` per source.
    edge_terms: BTreeMap<HeadId, Array4<f32>>,
    /// Per layer `(S, H, T_q, T_k)` and `(S, T, H, d)`: each source's own attention pattern and
    /// values by query head, under resample with [`ReferenceNeeds::source_attention`] (empty
    /// otherwise). A QK-edge term `A_r[q,k]·v_r[k]` of any head is computed from them
    /// ([`ReferenceValues::add_edge_term`]) instead of stored per head (`(S, T, T, d)` each).
    source_attention: Vec<(Array4<f32>, Array4<f32>)>,
    /// `(S, T_q)`, only under `align by label` with QK edges: whether `ref(z)[q]` equals
    /// `Σ_{k≤q} ref(A[q,k]·v[k])` in algebra for this source (see
    /// [`ReferenceValues::add_edge_base`]). `None`: it always does (position alignment).
    edge_base_is_ref_z: Option<Array2<bool>>,
}

/// What the reference values must cover.
#[derive(Clone, Debug, Default)]
pub struct ReferenceNeeds {
    /// Heads whose per-(query, key) terms are needed (heads with QK edges).
    pub edge_heads: BTreeSet<HeadId>,
    /// Whether per-head outputs are needed (path edges).
    pub head_outputs: bool,
    /// Under resample at position alignment: whether each reference prompt's own attention
    /// pattern and values are kept, every layer (`(R, H, T, T)` and `(R, T, H, d)`, 2 MB per
    /// layer for GPT-2 small at 32 × 16 tokens), so that the QK-edge term of every head is
    /// computed from them without storing `(R, T, T, d)` per head (QK-edge scores).
    pub source_attention: bool,
}

impl ReferenceNeeds {
    /// What the reference forward pass must keep to build values covering these needs: the
    /// attention pattern and values only of layers with QK-edge heads, head outputs only for
    /// path edges (`z` and the MLP outputs always).
    /// (`n_layers`: every layer's attention with [`Self::source_attention`].)
    pub fn cache_selection(&self, n_layers: usize) -> crate::model::CacheSelection {
        let mut attention_layers: BTreeSet<usize> =
            self.edge_heads.iter().map(|h| h.layer).collect();
        if self.source_attention {
            attention_layers.extend(0..n_layers);
        }
        crate::model::CacheSelection {
            attention_layers,
            head_outputs: self.head_outputs,
        }
    }
}

/// The shapes reference values for some [`ReferenceNeeds`] must have, known before any forward
/// pass; a disk cache entry that does not match them is recomputed, never read
/// ([`ReferenceValues::check_shape`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ReferenceShape {
    pub kind: AblationKind,
    /// Evaluated prompts (the length of `source_of_prompt`).
    pub n_prompts: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_head: usize,
    pub d_model: usize,
    /// Token positions of every source array (`T`).
    pub n_positions: usize,
    /// Sources (`S`): 1 for mean and R for resample under position alignment; `None` under
    /// label alignment, where it is the number of slot layouts (any, as long as every
    /// evaluated prompt's source is one of them).
    pub n_sources: Option<usize>,
    /// Heads whose QK-edge terms are stored: exactly these.
    pub edge_heads: Vec<HeadId>,
    /// Whether per-head outputs are stored.
    pub head_outputs: bool,
    /// Whether each source's attention pattern and values are stored (resample only; left out
    /// of the serialized shape when not, so other entries keep their keys).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub source_attention: bool,
}

/// `sum += values` element by element in f64: reference statistics are summed in f64, in
/// reference-prompt order, by both the position- and the label-aligned builders.
pub(super) fn accumulate<D: Dimension>(mut sum: ArrayViewMut<f64, D>, values: ArrayView<f32, D>) {
    sum.zip_mut_with(&values, |s, &x| *s += x as f64);
}

/// `sum += A[q,k]·v[k]` of `head` on prompt `row` of `acts`, `(d,)`: one QK-edge term.
pub(super) fn accumulate_edge_term(
    mut sum: ArrayViewMut1<f64>,
    acts: &LayerActivations,
    row: usize,
    head: usize,
    (q, k): (usize, usize),
) {
    let (pattern, v) = acts.attention();
    let a = pattern[[row, head, q, k]] as f64;
    sum.zip_mut_with(&v.slice(s![row, k, head, ..]), |s, &x| *s += a * x as f64);
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
            embed: None,
            edge_terms: BTreeMap::new(),
            source_attention: Vec::new(),
            edge_base_is_ref_z: None,
        }
    }

    /// Assembles values built elsewhere in this module tree (label alignment, [`super::align`]).
    #[allow(clippy::too_many_arguments)] // one argument per stored field
    pub(crate) fn from_parts(
        kind: AblationKind,
        source_of_prompt: Vec<usize>,
        z: Vec<Array4<f32>>,
        mlp_out: Vec<Array3<f32>>,
        head_out: Vec<Array4<f32>>,
        embed: Option<Array3<f32>>,
        edge_terms: BTreeMap<HeadId, Array4<f32>>,
        edge_base_is_ref_z: Option<Array2<bool>>,
    ) -> ReferenceValues {
        ReferenceValues {
            kind,
            source_of_prompt,
            z,
            mlp_out,
            head_out,
            embed,
            edge_terms,
            source_attention: Vec::new(),
            edge_base_is_ref_z,
        }
    }

    /// Builds the reference values from one reference forward pass over every reference
    /// prompt (see [`ReferenceBuilder`] for batches), after checking the reference rule.
    pub fn build(
        kind: AblationKind,
        layers: &[LayerActivations],
        ref_lens: &[usize],
        eval_lens: &[usize],
        describe_eval: &dyn Fn(usize) -> String,
        needs: &ReferenceNeeds,
    ) -> Result<ReferenceValues, ReferenceError> {
        if let Some(pairing) = pairing(kind) {
            if ref_lens.is_empty() {
                return Err(ReferenceError::Empty);
            }
            check_reference_lengths(pairing, false, eval_lens, ref_lens, describe_eval, &|r| {
                format!("reference prompt {r}")
            })?;
        }
        let mut builder = ReferenceBuilder::new(kind, needs.clone(), eval_lens.len(), ref_lens);
        builder.add_batch(layers);
        Ok(builder.finish())
    }

    /// Number of sources (1 for mean, R for resample, 0 for zero).
    pub fn n_sources(&self) -> usize {
        self.z.first().map(|z| z.shape()[0]).unwrap_or(0)
    }

    /// Checks every array against `shape`, every source index against the number of sources
    /// and every value for finiteness, so that values read from a file can never index out of
    /// bounds or carry a NaN into a result. The error says what does not match.
    pub fn check_shape(&self, shape: &ReferenceShape) -> Result<(), String> {
        if self.kind != shape.kind {
            return Err(format!(
                "ablation kind {:?}, expected {:?}",
                self.kind, shape.kind
            ));
        }
        if self.source_of_prompt.len() != shape.n_prompts {
            return Err(format!(
                "{} source indices for {} evaluated prompts",
                self.source_of_prompt.len(),
                shape.n_prompts
            ));
        }
        let n_src = self.n_sources();
        if shape.n_sources.is_some_and(|n| n != n_src) {
            return Err(format!(
                "{n_src} sources, expected {}",
                shape.n_sources.unwrap_or_default()
            ));
        }
        if let Some((prompt, src)) = self
            .source_of_prompt
            .iter()
            .enumerate()
            .find(|(_, &src)| src >= n_src)
        {
            return Err(format!("prompt {prompt} reads source {src} of {n_src}"));
        }
        let (s_, t, h, d, dm) = (
            n_src,
            shape.n_positions,
            shape.n_heads,
            shape.d_head,
            shape.d_model,
        );
        let expect = |what: &str, found: &[usize], expected: &[usize]| {
            if found == expected {
                Ok(())
            } else {
                Err(format!("{what} has shape {found:?}, expected {expected:?}"))
            }
        };
        let n_head_out = if shape.head_outputs {
            shape.n_layers
        } else {
            0
        };
        if self.z.len() != shape.n_layers
            || self.mlp_out.len() != shape.n_layers
            || self.head_out.len() != n_head_out
        {
            return Err(format!(
                "{} z, {} mlp_out and {} head_out layers, expected {}, {} and {n_head_out}",
                self.z.len(),
                self.mlp_out.len(),
                self.head_out.len(),
                shape.n_layers,
                shape.n_layers
            ));
        }
        for (l, z) in self.z.iter().enumerate() {
            expect(&format!("z.{l}"), z.shape(), &[s_, t, h, d])?;
        }
        for (l, m) in self.mlp_out.iter().enumerate() {
            expect(&format!("mlp_out.{l}"), m.shape(), &[s_, t, dm])?;
        }
        match (
            &self.embed,
            shape.head_outputs && self.kind != AblationKind::Zero,
        ) {
            (Some(e), true) => expect("embed", e.shape(), &[s_, t, dm])?,
            (None, false) => {}
            (Some(_), false) => return Err("an embedding without head outputs".to_string()),
            (None, true) => return Err("head outputs without the embedding".to_string()),
        }
        for (l, o) in self.head_out.iter().enumerate() {
            expect(&format!("head_out.{l}"), o.shape(), &[s_, t, h, dm])?;
        }
        if !self.edge_terms.keys().eq(shape.edge_heads.iter()) {
            return Err(format!(
                "QK-edge terms of heads {:?}, expected {:?}",
                self.edge_terms.keys().collect::<Vec<_>>(),
                shape.edge_heads
            ));
        }
        for (head, terms) in &self.edge_terms {
            expect(&format!("edge.{head}"), terms.shape(), &[s_, t, t, d])?;
        }
        if let Some(flags) = &self.edge_base_is_ref_z {
            expect("edge_base_is_ref_z", flags.shape(), &[s_, t])?;
        }
        let n_attention = if shape.source_attention {
            shape.n_layers
        } else {
            0
        };
        if self.source_attention.len() != n_attention {
            return Err(format!(
                "{} layers of source attention, expected {n_attention}",
                self.source_attention.len()
            ));
        }
        for (l, (pattern, v)) in self.source_attention.iter().enumerate() {
            expect(
                &format!("source_pattern.{l}"),
                pattern.shape(),
                &[s_, h, t, t],
            )?;
            expect(&format!("source_v.{l}"), v.shape(), &[s_, t, h, d])?;
        }
        let all_finite = self.z.iter().all(|a| a.iter().all(|x| x.is_finite()))
            && self.mlp_out.iter().all(|a| a.iter().all(|x| x.is_finite()))
            && self
                .head_out
                .iter()
                .all(|a| a.iter().all(|x| x.is_finite()))
            && self.embed.iter().all(|a| a.iter().all(|x| x.is_finite()))
            && self
                .edge_terms
                .values()
                .all(|a| a.iter().all(|x| x.is_finite()))
            && (self.source_attention.iter())
                .all(|(p, v)| p.iter().chain(v).all(|x| x.is_finite()));
        if !all_finite {
            return Err("a value is not finite".to_string());
        }
        Ok(())
    }

    /// Whether this covers what a plan needs (edge heads and head outputs).
    pub fn covers(&self, needs: &ReferenceNeeds) -> bool {
        self.kind == AblationKind::Zero
            || (needs
                .edge_heads
                .iter()
                .all(|h| self.edge_terms.contains_key(h))
                && (!needs.head_outputs || !self.head_out.is_empty())
                && (!needs.source_attention
                    || self.kind != AblationKind::Resample
                    || !self.source_attention.is_empty()))
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

    /// `Σ_{k≤q} ref(A[q,k]·v[k])` of `head` at query `q`, added into `out` (`(d,)`): the base
    /// of edge-mean ablation when few keys are kept. Where it equals `ref(z)[q]` in algebra
    /// (always under position alignment; under label alignment when every reference occurrence
    /// of the query's slot has the same key slots) it is read as `ref(z)[q]`, which makes "no
    /// edge kept" the node-ablated value bit for bit. Elsewhere (label alignment over prompts of
    /// different shapes) the terms are summed, so the edge formula stays one formula whichever
    /// form the hooks evaluate.
    pub fn add_edge_base(&self, head: HeadId, prompt: usize, q: usize, out: &mut [f64]) {
        if let Some(flags) = &self.edge_base_is_ref_z {
            let src = self.source_of_prompt[prompt];
            if !flags[[src, q]] {
                for k in 0..=q {
                    self.add_edge_term(head, prompt, q, k, out);
                }
                return;
            }
        }
        self.add_z(head.layer, prompt, q, head.head, out);
    }

    /// The replacement for the term `A[q,k]·v[k]` of `head`, added into `out` (`(d,)`): the
    /// stored term, or (a head without stored terms, under [`ReferenceNeeds::source_attention`])
    /// the source's `A_r[q,k]·v_r[k]`, computed as the stored terms are (f64, rounded to f32).
    pub fn add_edge_term(&self, head: HeadId, prompt: usize, q: usize, k: usize, out: &mut [f64]) {
        if self.kind == AblationKind::Zero {
            return;
        }
        let src = self.source_of_prompt[prompt];
        let Some(terms) = self.edge_terms.get(&head) else {
            let (pattern, v) = self.source_attention.get(head.layer).unwrap_or_else(|| {
                panic!("reference edge terms of head {head} were not computed; ReferenceNeeds must list every head with QK edges (or ask for source_attention)")
            });
            let a = pattern[[src, head.head, q, k]] as f64;
            for (o, &x) in out.iter_mut().zip(v.slice(s![src, k, head.head, ..])) {
                *o += (a * x as f64) as f32 as f64;
            }
            return;
        };
        for (o, &x) in out.iter_mut().zip(terms.slice(s![src, q, k, ..])) {
            *o += x as f64;
        }
    }

    /// The replacement MLP output at `t` of evaluated prompt `prompt`, `(D,)`; `None` = zero.
    pub fn mlp_out(
        &self,
        layer: usize,
        prompt: usize,
        t: usize,
    ) -> Option<ndarray::ArrayView1<'_, f32>> {
        let src = self.source_of_prompt[prompt];
        self.mlp_out.get(layer).map(|m| m.slice(s![src, t, ..]))
    }

    /// The replacement input embedding at `t` of evaluated prompt `prompt`, `(D,)`; `None` =
    /// zero.
    pub fn embed(&self, prompt: usize, t: usize) -> Option<ndarray::ArrayView1<'_, f32>> {
        if self.kind == AblationKind::Zero {
            return None;
        }
        let src = self.source_of_prompt[prompt];
        let embed = self.embed.as_ref().unwrap_or_else(|| {
            panic!("the reference embedding was not computed; ReferenceNeeds::head_outputs must be set for path edges and the builder given the embedding")
        });
        Some(embed.slice(s![src, t, ..]))
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

/// How an ablation kind reads the reference prompts; `None` when it reads none (zero).
pub fn pairing(kind: AblationKind) -> Option<Pairing> {
    match kind {
        AblationKind::Zero => None,
        AblationKind::Mean => Some(Pairing::Pooled),
        AblationKind::Resample => Some(Pairing::OneToOne),
    }
}

/// Accumulates reference values over batches of the reference forward pass, in prompt order
/// (sums in f64 in a fixed order, so the result does not depend on the batch size's threads).
pub struct ReferenceBuilder {
    kind: AblationKind,
    needs: ReferenceNeeds,
    n_eval: usize,
    ref_lens: Vec<usize>,
    /// Token count every source array is padded to.
    max_len: usize,
    /// Reference prompts seen so far.
    seen: usize,
    /// Per layer, `(S, T, H, d)` in f64 (sums under mean).
    z: Vec<ndarray::Array4<f64>>,
    mlp_out: Vec<ndarray::Array3<f64>>,
    head_out: Vec<ndarray::Array4<f64>>,
    /// `(S, T, D)`, with the head outputs.
    embed: Option<ndarray::Array3<f64>>,
    edge_terms: BTreeMap<HeadId, ndarray::Array4<f64>>,
    /// Per layer, each source's pattern `(S, H, T, T)` and values `(S, T, H, d)` (resample
    /// with `needs.source_attention`: copies, nothing is summed).
    source_attention: Vec<(Array4<f32>, Array4<f32>)>,
}

impl ReferenceBuilder {
    /// `ref_lens`: every reference prompt's token count, in the order batches will arrive.
    pub fn new(
        kind: AblationKind,
        needs: ReferenceNeeds,
        n_eval: usize,
        ref_lens: &[usize],
    ) -> ReferenceBuilder {
        ReferenceBuilder {
            kind,
            needs,
            n_eval,
            ref_lens: ref_lens.to_vec(),
            max_len: ref_lens.iter().copied().max().unwrap_or(0),
            seen: 0,
            z: Vec::new(),
            mlp_out: Vec::new(),
            head_out: Vec::new(),
            embed: None,
            edge_terms: BTreeMap::new(),
            source_attention: Vec::new(),
        }
    }

    /// Adds the input embeddings `(b, T, D)` of the next batch, before [`Self::add_batch`] of
    /// the same batch; kept only with the head outputs (path edges).
    pub fn add_embed_batch(&mut self, embed: ArrayView3<f32>) {
        if self.kind == AblationKind::Zero || !self.needs.head_outputs {
            return;
        }
        let (n_src, t_all) = (self.n_sources(), self.max_len);
        let sums = self
            .embed
            .get_or_insert_with(|| ndarray::Array3::zeros((n_src, t_all, embed.shape()[2])));
        for row in 0..embed.shape()[0] {
            let r = self.seen + row;
            let len = self.ref_lens[r];
            let src = if self.kind == AblationKind::Mean {
                0
            } else {
                r
            };
            accumulate(
                sums.slice_mut(s![src, ..len, ..]),
                embed.slice(s![row, ..len, ..]),
            );
        }
    }

    /// Whether each source's attention is kept: only under resample, where a source is one
    /// reference prompt.
    fn keeps_source_attention(&self) -> bool {
        self.needs.source_attention && self.kind == AblationKind::Resample
    }

    fn n_sources(&self) -> usize {
        match self.kind {
            AblationKind::Mean => 1,
            _ => self.ref_lens.len(),
        }
    }

    /// Adds one batch of reference prompts (the next ones in order), every layer.
    pub fn add_batch(&mut self, layers: &[LayerActivations]) {
        if self.kind == AblationKind::Zero || layers.is_empty() {
            return;
        }
        let n_src = self.n_sources();
        let t_all = self.max_len;
        let n_batch = layers[0].z.shape()[0];
        if self.z.is_empty() {
            for acts in layers {
                let (_, _, h, d) = acts.z.dim();
                let d_model = acts.mlp_out.shape()[2];
                self.z.push(ndarray::Array4::zeros((n_src, t_all, h, d)));
                self.mlp_out
                    .push(ndarray::Array3::zeros((n_src, t_all, d_model)));
                if self.needs.head_outputs {
                    self.head_out
                        .push(ndarray::Array4::zeros((n_src, t_all, h, d_model)));
                }
            }
            for head in &self.needs.edge_heads {
                let d = layers[head.layer].z.shape()[3];
                self.edge_terms
                    .insert(*head, ndarray::Array4::zeros((n_src, t_all, t_all, d)));
            }
            if self.keeps_source_attention() {
                for acts in layers {
                    let (_, _, h, d) = acts.z.dim();
                    self.source_attention.push((
                        Array4::zeros((n_src, h, t_all, t_all)),
                        Array4::zeros((n_src, t_all, h, d)),
                    ));
                }
            }
        }
        for row in 0..n_batch {
            let r = self.seen + row;
            let len = self.ref_lens[r];
            let src = if self.kind == AblationKind::Mean {
                0
            } else {
                r
            };
            for (layer, acts) in layers.iter().enumerate() {
                accumulate(
                    self.z[layer].slice_mut(s![src, ..len, .., ..]),
                    acts.z.slice(s![row, ..len, .., ..]),
                );
                accumulate(
                    self.mlp_out[layer].slice_mut(s![src, ..len, ..]),
                    acts.mlp_out.slice(s![row, ..len, ..]),
                );
                if self.needs.head_outputs {
                    accumulate(
                        self.head_out[layer].slice_mut(s![src, ..len, .., ..]),
                        acts.head_out().slice(s![row, ..len, .., ..]),
                    );
                }
            }
            for (acts, (pattern, v)) in layers.iter().zip(&mut self.source_attention) {
                let (p_row, v_row) = acts.attention();
                pattern
                    .slice_mut(s![src, .., ..len, ..len])
                    .assign(&p_row.slice(s![row, .., ..len, ..len]));
                v.slice_mut(s![src, ..len, .., ..])
                    .assign(&v_row.slice(s![row, ..len, .., ..]));
            }
            for (head, terms) in self.edge_terms.iter_mut() {
                for q in 0..len {
                    for k in 0..=q {
                        accumulate_edge_term(
                            terms.slice_mut(s![src, q, k, ..]),
                            &layers[head.layer],
                            row,
                            head.head,
                            (q, k),
                        );
                    }
                }
            }
        }
        self.seen += n_batch;
    }

    /// The reference values (means divided out, converted to f32).
    pub fn finish(self) -> ReferenceValues {
        if self.kind == AblationKind::Zero {
            return ReferenceValues::zero(self.n_eval);
        }
        let n_ref = self.ref_lens.len().max(1);
        let scale = if self.kind == AblationKind::Mean {
            1.0 / n_ref as f64
        } else {
            1.0
        };
        let to_f32_4 = |a: ndarray::Array4<f64>| a.mapv(|x| (x * scale) as f32);
        let source_of_prompt = match self.kind {
            AblationKind::Mean => vec![0; self.n_eval],
            // One-to-one (data::check_reference_lengths): prompt b reads reference prompt b.
            _ => (0..self.n_eval).collect(),
        };
        ReferenceValues {
            kind: self.kind,
            source_of_prompt,
            z: self.z.into_iter().map(to_f32_4).collect(),
            mlp_out: self
                .mlp_out
                .into_iter()
                .map(|a| a.mapv(|x| (x * scale) as f32))
                .collect(),
            head_out: self.head_out.into_iter().map(to_f32_4).collect(),
            embed: self.embed.map(|a| a.mapv(|x| (x * scale) as f32)),
            edge_terms: self
                .edge_terms
                .into_iter()
                .map(|(h, a)| (h, to_f32_4(a)))
                .collect(),
            source_attention: self.source_attention,
            edge_base_is_ref_z: None,
        }
    }
}

/// On-disk form of [`ReferenceValues`]: a safetensors file (f32, little-endian) whose tensors
/// are `z.{layer}`, `mlp_out.{layer}`, `head_out.{layer}`, `embed`, `edge.{layer}.{head}` and
/// `source_of_prompt`, with the ablation kind in the metadata. Values round-trip bit for bit.
impl ReferenceValues {
    pub fn to_safetensors(&self) -> Vec<u8> {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let f32_bytes = |a: &[f32]| a.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: String, shape: &[usize], data: Vec<f32>| {
            named.push((name, shape.to_vec(), f32_bytes(&data)));
        };
        for (l, a) in self.z.iter().enumerate() {
            push(format!("z.{l}"), a.shape(), a.iter().copied().collect());
        }
        for (l, a) in self.mlp_out.iter().enumerate() {
            push(
                format!("mlp_out.{l}"),
                a.shape(),
                a.iter().copied().collect(),
            );
        }
        for (l, a) in self.head_out.iter().enumerate() {
            push(
                format!("head_out.{l}"),
                a.shape(),
                a.iter().copied().collect(),
            );
        }
        if let Some(a) = &self.embed {
            push("embed".to_string(), a.shape(), a.iter().copied().collect());
        }
        for (h, a) in &self.edge_terms {
            push(
                format!("edge.{}.{}", h.layer, h.head),
                a.shape(),
                a.iter().copied().collect(),
            );
        }
        for (l, (pattern, v)) in self.source_attention.iter().enumerate() {
            push(
                format!("source_pattern.{l}"),
                pattern.shape(),
                pattern.iter().copied().collect(),
            );
            push(
                format!("source_v.{l}"),
                v.shape(),
                v.iter().copied().collect(),
            );
        }
        let sources: Vec<u8> = self
            .source_of_prompt
            .iter()
            .flat_map(|&s| (s as u64).to_le_bytes())
            .collect();
        let mut views: Vec<(String, TensorView)> = named
            .iter()
            .map(|(name, shape, data)| {
                (
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), data).expect("sizes match"),
                )
            })
            .collect();
        views.push((
            "source_of_prompt".to_string(),
            TensorView::new(Dtype::U64, vec![self.source_of_prompt.len()], &sources)
                .expect("sizes match"),
        ));
        let flag_bytes: Option<Vec<u8>> = self
            .edge_base_is_ref_z
            .as_ref()
            .map(|flags| flags.iter().map(|&f| u8::from(f)).collect());
        if let (Some(flags), Some(bytes)) = (&self.edge_base_is_ref_z, &flag_bytes) {
            views.push((
                "edge_base_is_ref_z".to_string(),
                TensorView::new(Dtype::U8, flags.shape().to_vec(), bytes).expect("sizes match"),
            ));
        }
        let metadata = [("kind".to_string(), format!("{:?}", self.kind))].into();
        safetensors::serialize(views, Some(metadata)).expect("reference values serialize")
    }

    /// Reads what [`ReferenceValues::to_safetensors`] wrote; `None` if the bytes are not such
    /// a file (a stale or damaged cache entry is recomputed, never trusted).
    pub fn from_safetensors(bytes: &[u8]) -> Option<ReferenceValues> {
        use safetensors::{Dtype, SafeTensors};
        let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
        let kind = match meta.metadata().as_ref()?.get("kind")?.as_str() {
            "Mean" => AblationKind::Mean,
            "Resample" => AblationKind::Resample,
            "Zero" => AblationKind::Zero,
            _ => return None,
        };
        let tensors = SafeTensors::deserialize(bytes).ok()?;
        let floats = |name: &str| -> Option<(Vec<usize>, Vec<f32>)> {
            let t = tensors.tensor(name).ok()?;
            if t.dtype() != Dtype::F32 {
                return None;
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some((t.shape().to_vec(), data))
        };
        let array4 = |name: &str| -> Option<Array4<f32>> {
            let (shape, data) = floats(name)?;
            let shape: [usize; 4] = shape.try_into().ok()?;
            Array4::from_shape_vec(shape, data).ok()
        };
        let array3 = |name: &str| -> Option<Array3<f32>> {
            let (shape, data) = floats(name)?;
            let shape: [usize; 3] = shape.try_into().ok()?;
            Array3::from_shape_vec(shape, data).ok()
        };
        let count = |prefix: &str| {
            tensors
                .names()
                .iter()
                .filter(|n| n.starts_with(prefix))
                .count()
        };
        let z = (0..count("z."))
            .map(|l| array4(&format!("z.{l}")))
            .collect::<Option<Vec<_>>>()?;
        let mlp_out = (0..count("mlp_out."))
            .map(|l| array3(&format!("mlp_out.{l}")))
            .collect::<Option<Vec<_>>>()?;
        let head_out = (0..count("head_out."))
            .map(|l| array4(&format!("head_out.{l}")))
            .collect::<Option<Vec<_>>>()?;
        let embed = match tensors.names().contains(&"embed") {
            true => Some(array3("embed")?),
            false => None,
        };
        let mut edge_terms = BTreeMap::new();
        for name in tensors.names() {
            if let Some(rest) = name.strip_prefix("edge.") {
                let (layer, head) = rest.split_once('.')?;
                let head = HeadId {
                    layer: layer.parse().ok()?,
                    head: head.parse().ok()?,
                };
                edge_terms.insert(head, array4(name)?);
            }
        }
        let sources = tensors.tensor("source_of_prompt").ok()?;
        let source_of_prompt = sources
            .data()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let edge_base_is_ref_z = match tensors.tensor("edge_base_is_ref_z") {
            Ok(t) if t.dtype() == Dtype::U8 => {
                let shape: [usize; 2] = t.shape().to_vec().try_into().ok()?;
                let flags = t.data().iter().map(|&b| b != 0).collect();
                Some(Array2::from_shape_vec(shape, flags).ok()?)
            }
            Ok(_) => return None,
            Err(_) => None,
        };
        let source_attention = (0..count("source_pattern."))
            .map(|l| {
                Some((
                    array4(&format!("source_pattern.{l}"))?,
                    array4(&format!("source_v.{l}"))?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        let mut values = ReferenceValues::from_parts(
            kind,
            source_of_prompt,
            z,
            mlp_out,
            head_out,
            embed,
            edge_terms,
            edge_base_is_ref_z,
        );
        values.source_attention = source_attention;
        Some(values)
    }
}
