//! The forward-pass hooks that apply a [`Plan`]: node ablation and QK-edge ablation of head
//! outputs `z`, attention knockout, MLP ablation and path edges. docs/semantics.md has the
//! formulas; each is applied at exactly one intervention point.

use std::ops::Range;

use ndarray::{s, Array3, ArrayView3, ArrayView4, ArrayViewMut3, ArrayViewMut4};

use super::reference::ReferenceValues;
use crate::model::{Component, ComponentOutputs, HeadInput, Interventions};
use crate::plan::Plan;
use crate::resolve::bound::{Downstream, EdgeAblation, HeadId, Upstream};

/// A plan applied to one batch of evaluated prompts.
pub struct PlanInterventions<'a> {
    pub plan: &'a Plan,
    pub reference: &'a ReferenceValues,
    pub edge_ablation: EdgeAblation,
    /// The evaluated prompts in this batch: batch row `i` is prompt `prompts.start + i`.
    pub prompts: Range<usize>,
}

impl PlanInterventions<'_> {
    fn rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.prompts
            .clone()
            .enumerate()
            .map(|(row, prompt)| (row, prompt, self.plan.prompt_lens[prompt]))
    }

    /// Edge-mean ablation at one query where only the keys `keys` are kept:
    /// `z[q] = Σ_{k∈K} A[q,k]·v[k] + Σ_{k∉K} ref(A[q,k]·v[k])`.
    ///
    /// Computed as whichever of two algebraically equal forms sums fewer terms, so that the
    /// limits are exact in floating point, not just in algebra: with every key kept nothing is
    /// changed (`z[q]` is the clean value), and with no key kept `z[q]` is the node-ablated
    /// value, bit for bit.
    ///   few kept:   z[q] = ref(z[q]) + Σ_{k∈K} (A[q,k]·v[k] − ref(A[q,k]·v[k]))
    ///   many kept:  z[q] = z[q]      − Σ_{k≤q, k∉K} (A[q,k]·v[k] − ref(A[q,k]·v[k]))
    /// (`ref(z[q]) = Σ_k ref(A[q,k]·v[k])` since a mean of sums is the sum of means.)
    #[allow(clippy::too_many_arguments)]
    fn edge_mean(
        &self,
        layer: usize,
        row: usize,
        prompt: usize,
        query: usize,
        head: usize,
        keys: &[usize],
        pattern: &ArrayView4<f32>,
        v: &ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        let head_id = HeadId { layer, head };
        let d = z.shape()[3];
        let n_causal = query + 1;
        let few_kept = keys.len() * 2 <= n_causal;
        let mut out = vec![0f64; d];
        let mut reference_term = vec![0f64; d];
        let mut add_difference = |k: usize, sign: f64, out: &mut [f64]| {
            reference_term.iter_mut().for_each(|x| *x = 0.0);
            self.reference
                .add_edge_term(head_id, prompt, query, k, &mut reference_term);
            let a = pattern[[row, head, query, k]] as f64;
            for i in 0..d {
                out[i] += sign * (a * v[[row, k, head, i]] as f64 - reference_term[i]);
            }
        };
        if few_kept {
            self.reference
                .add_edge_base(head_id, prompt, query, &mut out);
            for &k in keys {
                add_difference(k, 1.0, &mut out);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(z.slice(s![row, query, head, ..])) {
                *o = x as f64;
            }
            let mut kept = keys.iter().peekable();
            for k in 0..n_causal {
                if kept.peek() == Some(&&k) {
                    kept.next();
                    continue;
                }
                add_difference(k, -1.0, &mut out);
            }
        }
        for (dst, &x) in z.slice_mut(s![row, query, head, ..]).iter_mut().zip(&out) {
            *dst = x as f32;
        }
    }

    /// Rebuilds the residual stream a downstream input reads: the stream as computed in this
    /// forward, with each in-scope upstream component whose path edge is not kept (the
    /// embedding too, in an edge-complete circuit) swapped for its reference value:
    /// `x − out_u + ref(out_u)`.
    fn path_input(
        &self,
        downstream: Downstream,
        resid: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        let mask = self.plan.path_inputs.get(&downstream)?;
        let shape = self.plan.shape;
        let mut x = resid.to_owned(); // (B, T, D)
                                      // The finished layers whose heads / MLP this input reads.
        let reader = downstream.component();
        let reads = |writer| shape.residual.reads(reader, writer);
        let head_layers: Vec<usize> = (0..outputs.head_out.len())
            .filter(|&layer| reads(Component::Attention(layer)))
            .collect();
        let mlp_layers: Vec<usize> = (0..outputs.mlp_out.len())
            .filter(|&layer| reads(Component::Mlp(layer)))
            .collect();
        let embed = shape.upstream_index(Upstream::Embed);
        for (row, prompt, len) in self.rows() {
            for t in 0..len {
                let mut pos = x.slice_mut(s![row, t, ..]);
                // Kept unless the circuit is edge-complete and keeps no `embed` edge here.
                if !mask[[prompt, t, embed]] {
                    pos -= &outputs.embed.slice(s![row, t, ..]);
                    if let Some(r) = self.reference.embed(prompt, t) {
                        pos += &r;
                    }
                }
                for &layer in &head_layers {
                    for head in 0..shape.n_heads {
                        let u = shape.upstream_index(Upstream::Head(HeadId { layer, head }));
                        if mask[[prompt, t, u]] {
                            continue;
                        }
                        let clean = outputs.head_out[layer].slice(s![row, t, head, ..]);
                        pos -= &clean;
                        if let Some(r) = self.reference.head_out(layer, prompt, t, head) {
                            pos += &r;
                        }
                    }
                }
                if !self.plan.scope_includes_mlps {
                    continue; // MLPs are outside the ablation: they always reach downstream
                }
                for &layer in &mlp_layers {
                    let u = shape.upstream_index(Upstream::Mlp(layer));
                    if mask[[prompt, t, u]] {
                        continue;
                    }
                    let clean = outputs.mlp_out[layer].slice(s![row, t, ..]);
                    pos -= &clean;
                    if let Some(r) = self.reference.mlp_out(layer, prompt, t) {
                        pos += &r;
                    }
                }
            }
        }
        Some(x)
    }
}

impl Interventions for PlanInterventions<'_> {
    fn edit_scores(&self, layer: usize, scores: &mut ArrayViewMut4<f32>) {
        if self.edge_ablation != EdgeAblation::Knockout {
            return;
        }
        // scores: (B, H, T_q, T_k)
        for q in &self.plan.qk_queries[layer] {
            if !self.prompts.contains(&q.prompt) {
                continue;
            }
            let row = q.prompt - self.prompts.start;
            let mut kept = q.keys.iter().peekable();
            for k in 0..=q.query {
                if kept.peek() == Some(&&k) {
                    kept.next();
                    continue;
                }
                scores[[row, q.head, q.query, k]] = f32::NEG_INFINITY;
            }
        }
    }

    fn edit_z(
        &self,
        layer: usize,
        pattern: ArrayView4<f32>,
        v: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        // z: (B, T, H, d)
        let keep = &self.plan.head_keep[layer]; // (B_all, T, H)
        let d = z.shape()[3];
        let mut replacement = vec![0f64; d];
        for (row, prompt, len) in self.rows() {
            for t in 0..len {
                for head in 0..self.plan.shape.n_heads {
                    if keep[[prompt, t, head]] {
                        continue;
                    }
                    replacement.iter_mut().for_each(|x| *x = 0.0);
                    self.reference
                        .add_z(layer, prompt, t, head, &mut replacement);
                    for (dst, &x) in z
                        .slice_mut(s![row, t, head, ..])
                        .iter_mut()
                        .zip(&replacement)
                    {
                        *dst = x as f32;
                    }
                }
            }
        }
        if self.edge_ablation == EdgeAblation::EdgeMean {
            for q in &self.plan.qk_queries[layer] {
                if !self.prompts.contains(&q.prompt) {
                    continue;
                }
                let row = q.prompt - self.prompts.start;
                self.edge_mean(
                    layer, row, q.prompt, q.query, q.head, &q.keys, &pattern, &v, z,
                );
            }
        }
    }

    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        // mlp_out: (B, T, D)
        let keep = &self.plan.mlp_keep[layer]; // (B_all, T)
        for (row, prompt, len) in self.rows() {
            for t in 0..len {
                if keep[[prompt, t]] {
                    continue;
                }
                let mut dst = mlp_out.slice_mut(s![row, t, ..]);
                match self.reference.mlp_out(layer, prompt, t) {
                    Some(r) => dst.assign(&r),
                    None => dst.fill(0.0),
                }
            }
        }
    }

    fn replaces_mlp_out(&self, layer: usize) -> bool {
        // Every real row ablated: `edit_mlp_out` writes the reference value (or 0) over all.
        let keep = &self.plan.mlp_keep[layer]; // (B_all, T)
        self.rows()
            .all(|(_, prompt, len)| (0..len).all(|t| !keep[[prompt, t]]))
    }

    fn needs_component_outputs(&self) -> bool {
        self.plan.has_path_edges()
    }

    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: HeadInput,
        resid_pre: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.path_input(
            Downstream::Head(HeadId { layer, head }, which),
            resid_pre,
            outputs,
        )
    }

    fn mlp_input(
        &self,
        layer: usize,
        resid_mid: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.path_input(Downstream::Mlp(layer), resid_mid, outputs)
    }

    fn unembed_input(
        &self,
        resid_final: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        self.path_input(Downstream::Logits, resid_final, outputs)
    }
}
