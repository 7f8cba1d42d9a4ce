//! Path-edge scores: `(ũ − u) · ∂M/∂(v's residual input)` for every upstream `u` and every
//! downstream input `v` that reads it (docs/semantics.md, "Path edges").
//!
//! The head-input gradients are `3 · (B, T, H, D)` per layer, half of a gradient pass's memory
//! at GPT-2 small if every layer's were kept (and under `eap-ig` a running sum of them besides).
//! So a [`PathEdgeScorer`] is the backward's [`HeadInputSink`]: the forward hands it the clean
//! activations, from which it computes every upstream's `ũ − u`, and the backward hands it each
//! layer's head-input gradients, which it multiplies a few layers at a time
//! ([`LAYERS_PER_PRODUCT`]) and lets go. Those layers' heads read only the upstreams written
//! before the last of them, a prefix of [`super::upstreams`], so each token's product is
//! `(U', D)·(D, 3H·layers)`: about two thirds of the multiply-adds of one product with every
//! upstream. Under `eap-ig` each point's gradients are scored as they come (the score is
//! linear in the gradient), weighted `1/m`; the MLP and logit inputs (one `(B, T, D)` each per
//! layer) are averaged over the points as before and scored once.
//!
//! Each (prompt, token)'s values are summed over the points in a buffer and added to the
//! [`Aggregate`] in prompt order, then token order, when the pass is done
//! ([`PathEdgeScorer::finish`]), so the sums do not depend on how many prompts a pass holds.

use std::sync::Mutex;

use ndarray::{s, Array2, Array3, Array4, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::{downstreams, upstreams};
use super::{path_components, reader_of, Aggregate, AttributionInputs, MeanGradients};
use crate::model::backward::{self, HeadInputGradients, HeadInputSink};
use crate::model::linalg::Kernel;
use crate::model::{ActivationCache, HeadInput};
use crate::resolve::bound::{Downstream, Upstream};

/// One pass's path-edge scores (see the module's documentation).
pub(super) struct PathEdgeScorer<'s, 'a> {
    inputs: &'s AttributionInputs<'a>,
    /// The pass's first prompt in the whole set (reference values and masks index it).
    offset: usize,
    ups: Vec<Upstream>,
    downs: Vec<Downstream>,
    /// Per downstream `j`, `(first slot, n)`: `j` reads the first `n` upstreams (upstreams are
    /// in the order they write, so what a downstream reads is a prefix), and the sums hold
    /// pair (upstream `i < n`, `j`) at slot `first + i`. A column's products are added to its
    /// sums as one slice, which vectorizes.
    column_slots: Vec<(usize, usize)>,
    /// The component (index into `path_components`) each slot of the sums is.
    component_of_slot: Vec<usize>,
    /// Relative to a circuit: each downstream's rebuilt input, if the circuit rebuilds it.
    readers: Vec<Option<&'s backward::PathReader>>,
    /// Each upstream's index as a path reader's writer mask reads it.
    writer_index: Vec<usize>,
    /// Per layer: how many upstreams (a prefix of `ups`) write before its attention.
    before_layer: Vec<usize>,
    /// Per layer: its heads' q/k/v inputs, as indices into `downs`.
    head_columns: Vec<Vec<usize>>,
    /// The weight of one gradient pass's head-input products (`1/m` under `eap-ig`).
    head_weight: f64,
    n_components: usize,
    state: Mutex<State>,
}

/// How many layers' head-input gradients are held and multiplied together: one product per
/// token and layer, `(U_L, D)·(D, 3H)`, is too narrow for the product kernels to run fast
/// (measured at GPT-2 small, `benches/eap.rs`: 3× the time of one product per token with every
/// upstream and downstream; 3, 4, 6 or 12 layers at a time were within the noise of each other,
/// and 4 holds a third of the memory of 12). Measured again with the gemm crate's products
/// (2026-12-02): one layer at a time, row-major `(U_L, 3H)` products, took 2.76 s against 2.31 s
/// for 4 layers at a time into column-major products.
pub(super) const LAYERS_PER_PRODUCT: usize = 4;

struct State {
    /// `ũ − u` of every upstream at every token, `(B, T, D, U)`, from the clean forward: each
    /// token's `(U, D)` stored transposed (see [`PathEdgeScorer::deltas`]).
    delta: Option<Array4<f32>>,
    /// The previous pass's `ũ − u` array, overwritten by this pass's if its shape fits.
    recycled: Option<Array4<f32>>,
    /// The layers (index, gradients) received since the last product.
    held: Vec<(usize, HeadInputGradients)>,
    /// Held layers' arrays after their product, for the backward's later layers to write
    /// into ([`HeadInputSink::recycled`]); let go before the MLP and logit inputs' product.
    spare: Vec<Array4<f32>>,
    /// Each slot's value at each (prompt, token) so far, `(B, T, slots)`: the components in
    /// slot order (`component_of_slot`).
    sums: Array3<f64>,
}

impl<'s, 'a> PathEdgeScorer<'s, 'a> {
    /// The scorer of the pass `inputs` (prompts `offset..` of the whole set); `head_weight`
    /// weighs each gradient pass's head-input products (`1/m` under `eap-ig`, else 1).
    /// `recycled` is the previous pass's `ũ − u` array ([`PathEdgeScorer::finish`] hands it
    /// back): this pass writes its own into it when the shapes agree. A fresh array of that
    /// size (62 MB a pass at GPT-2 small) is new pages, and the kernel's first-touch faults on
    /// them took about a third of an END forward per `eap` call (`perf record`, 2026-12-03).
    pub(super) fn new(
        inputs: &'s AttributionInputs<'a>,
        offset: usize,
        head_weight: f64,
        recycled: Option<Array4<f32>>,
    ) -> PathEdgeScorer<'s, 'a> {
        let config = &inputs.model.config;
        let (n_layers, n_heads) = (config.n_layers, config.n_heads);
        let ups = upstreams(n_layers, n_heads, inputs.mlps_in_scope, inputs.embed_edges);
        let downs = downstreams(n_layers, n_heads);
        let (components, pair) = path_components(inputs);
        let mut component_of_slot = Vec::with_capacity(components.len());
        let column_slots = (0..downs.len())
            .map(|j| {
                let first = component_of_slot.len();
                component_of_slot.extend(pair.iter().map_while(|readers| readers[j]));
                let n = component_of_slot.len() - first;
                assert!(
                    pair[n..].iter().all(|readers| readers[j].is_none()),
                    "a downstream reads a prefix of the upstreams"
                );
                (first, n)
            })
            .collect();
        let paths = inputs.circuit.map(|c| c.kept.paths).unwrap_or(&[]);
        let readers = downs
            .iter()
            .map(|d| paths.iter().find(|p| p.reader == reader_of(*d)))
            .collect();
        let shape = crate::plan::PlanShape {
            n_layers,
            n_heads,
            residual: config.residual,
        };
        let writer_index = ups.iter().map(|&u| shape.upstream_index(u)).collect();
        let layer_of = |u: &Upstream| match *u {
            Upstream::Embed => None,
            Upstream::Head(h) => Some(h.layer),
            Upstream::Mlp(l) => Some(l),
        };
        let before_layer = (0..n_layers)
            .map(|layer| {
                ups.iter()
                    .take_while(|u| layer_of(u).is_none_or(|l| l < layer))
                    .count()
            })
            .collect();
        let head_columns = (0..n_layers)
            .map(|layer| {
                (downs.iter().enumerate())
                    .filter(|(_, d)| matches!(d, Downstream::Head(h, _) if h.layer == layer))
                    .map(|(j, _)| j)
                    .collect()
            })
            .collect();
        let seq = inputs.ids.iter().map(Vec::len).max().unwrap_or(0);
        PathEdgeScorer {
            inputs,
            offset,
            ups,
            downs,
            column_slots,
            component_of_slot,
            readers,
            writer_index,
            before_layer,
            head_columns,
            head_weight,
            n_components: components.len(),
            state: Mutex::new(State {
                delta: None,
                recycled,
                held: Vec::new(),
                spare: Vec::new(),
                sums: Array3::zeros((inputs.ids.len(), seq, components.len())),
            }),
        }
    }

    /// `ũ − u` of every upstream at every token of the pass, `(B, T, D, U)`, in the residual
    /// stream: computed `(B, T, U, D)`, one upstream per thread, then each token's `(U, D)`
    /// transposed in place. The products ([`PathEdgeScorer::score`]) read a token's upstreams
    /// as their left factor, which the gemm crate copies into its packed layout on every
    /// product: element by element from a row-major factor, whole vectors from a column-major
    /// one (upstreams adjacent). Measured at GPT-2 small's four product shapes over 16 tokens
    /// (AMD EPYC, 2026-12-04, a scratch program): 1.09–2.8× faster column-major, about 0.42 s
    /// → 0.32 s of an `eap` call's products, for a transpose of 61 M elements a call at
    /// 0.47 ns each. Computing them: a head's is `(z̃ − z)·W_O^h`, one product over every
    /// token of the pass (`(B·T, d)·(d, D)`, zero at padding; one product per prompt and head
    /// took three times as long at GPT-2 small, most of it each small product's set-up).
    /// Every value is written, padding included (zero there), so a recycled array's old values
    /// never survive.
    fn deltas(&self, cache: &ActivationCache, recycled: Option<Array4<f32>>) -> Array4<f32> {
        let inputs = self.inputs;
        let (batch, seq, d_model) = cache.embed.dim();
        let d_head = cache.layers[0].z.dim().3;
        let n_ups = self.ups.len();
        let shape = (batch, seq, n_ups, d_model);
        let recycled = recycled
            .filter(|r| r.dim() == (batch, seq, d_model, n_ups) && r.is_standard_layout())
            .map(|r| r.into_shape_with_order(shape).expect("a standard array"));
        let mut delta = recycled.unwrap_or_else(|| Array4::<f32>::zeros(shape)); // (B, T, U, D)
        let prompts =
            || (0..batch).map(|local| (local, self.offset + local, inputs.ids[local].len()));
        (delta.axis_iter_mut(Axis(2)), &self.ups)
            .into_par_iter()
            .for_each(|(mut delta, u)| match *u {
                // delta: (B, T, D), this upstream's
                Upstream::Head(h) => {
                    let mut dz = Array2::<f32>::zeros((batch * seq, d_head)); // (B·T, d)
                    let mut ablated = vec![0.0f64; d_head];
                    for (local, b, len) in prompts() {
                        let z = cache.layers[h.layer].z.slice(s![local, ..len, h.head, ..]); // (T, d)
                        for t in 0..len {
                            ablated.iter_mut().for_each(|x| *x = 0.0);
                            inputs.reference.add_z(h.layer, b, t, h.head, &mut ablated);
                            let row = dz.row_mut(local * seq + t);
                            for ((out, &a), &o) in row.into_iter().zip(&ablated).zip(z.row(t)) {
                                *out = (a - o as f64) as f32;
                            }
                        }
                    }
                    let w_o = backward::head_output_weight(inputs.model, h.layer, h.head); // (d, D)
                    let merged = delta.merge_axes(Axis(0), Axis(1)); // (1, B·T, D): rows U·D apart
                    assert!(
                        merged,
                        "a prompt's tokens are T·U·D apart, a token's rows U·D"
                    );
                    let mut target = delta.index_axis_mut(Axis(0), 0); // (B·T, D)
                    crate::model::linalg::matmul_into(dz.view(), w_o.view(), 0.0, &mut target);
                }
                Upstream::Mlp(l) => {
                    for (local, b, len) in prompts() {
                        for t in 0..len {
                            let o = cache.layers[l].mlp_out.slice(s![local, t, ..]);
                            let target = delta.slice_mut(s![local, t, ..]);
                            difference_into(inputs.reference.mlp_out(l, b, t), o, target);
                        }
                        delta.slice_mut(s![local, len.., ..]).fill(0.0);
                    }
                }
                Upstream::Embed => {
                    for (local, b, len) in prompts() {
                        for t in 0..len {
                            let x = cache.embed.slice(s![local, t, ..]);
                            let target = delta.slice_mut(s![local, t, ..]);
                            difference_into(inputs.reference.embed(b, t), x, target);
                        }
                        delta.slice_mut(s![local, len.., ..]).fill(0.0);
                    }
                }
            });
        let flat = delta
            .as_slice_mut()
            .expect("a fresh or recycled standard array");
        flat.par_chunks_mut(n_ups * d_model).for_each_init(
            || vec![0.0f32; n_ups * d_model],
            |scratch, token| {
                scratch.copy_from_slice(token); // (U, D)
                crate::model::linalg::transpose_into(scratch, n_ups, d_model, token);
                // (D, U)
            },
        );
        delta
            .into_shape_with_order((batch, seq, d_model, n_ups))
            .expect("each token's values, now (D, U)")
    }

    /// Multiplies the downstream gradients that `fill(local, t, grads)` writes into `grads`
    /// `(C, D)` (row `c` for column `c`, downstream `columns[c]` of `downs`) by the first
    /// `n_ups` upstreams' `ũ − u` at every token, and adds each product, times `weight`, to
    /// its component's sum.
    fn score(
        &self,
        state: &mut State,
        n_ups: usize,
        columns: &[usize],
        weight: f64,
        fill: impl Fn(usize, usize, &mut Array2<f32>) + Sync,
    ) {
        let State { delta, sums, .. } = state;
        let delta = delta
            .as_ref()
            .expect("the forward hands the scorer its activations before the backward");
        let d_model = delta.dim().2;
        if n_ups == 0 {
            return; // the first layer's heads, without embedding edges: nothing upstream
        }
        // The products are `(U', C)` column-major, product `k = c·U' + i` for upstream `i` and
        // column `c`: the gemm crate then reads the gradients `(C, D)` in place as the right
        // factor and packs only the upstreams, column-major (measured at GPT-2 small's three
        // shapes: 1.1–1.7× faster than matrixmultiply's row-major product). Column `c` adds its
        // first `n` products (the upstreams it reads) to its slots `first..first + n`; the rest
        // are not read.
        let slices: Vec<(usize, usize)> = columns.iter().map(|&j| self.column_slots[j]).collect();
        assert!(
            slices.iter().all(|&(_, n)| n <= n_ups),
            "a column reads only upstreams written before its layer"
        );
        (sums.outer_iter_mut(), delta.outer_iter())
            .into_par_iter()
            .enumerate()
            .for_each_init(
                // Once per thread's share rather than per prompt: up to 0.4 MB each at GPT-2
                // small, so a fresh one is fresh pages. Every element is written before it is
                // read (`fill` writes every row; the product does not read its output).
                || {
                    let grads = Array2::<f32>::zeros((columns.len(), d_model)); // (C, D)
                    let products = Array2::<f32>::zeros((n_ups, columns.len()).f()); // (U', C)
                    (grads, products)
                },
                |(grads, products), (local, (mut sums, delta))| {
                    let b = self.offset + local;
                    for t in 0..self.inputs.ids[local].len() {
                        fill(local, t, grads);
                        let ups = delta.slice(s![t, .., ..n_ups]).reversed_axes(); // (U', D)
                        Kernel::Gemm.product_into_on_this_thread(
                            ups,
                            grads.t(),
                            0.0,
                            &mut products.view_mut(),
                        );
                        let products = products.as_slice_memory_order().expect("a standard array");
                        let mut sums = sums.row_mut(t);
                        let sums = sums.as_slice_mut().expect("a row of a standard array");
                        for (c, &(first, n)) in slices.iter().enumerate() {
                            let products = &products[c * n_ups..c * n_ups + n];
                            let column_sums = sums[first..first + n].iter_mut().zip(products);
                            match &self.readers[columns[c]] {
                                None => column_sums.for_each(|(sum, &p)| *sum += p as f64 * weight),
                                // A path the circuit already cuts carries ũ: cutting it changes
                                // nothing.
                                Some(r) => (column_sums.enumerate())
                                    .filter(|&(i, _)| r.reached_by(b, t, self.writer_index[i]))
                                    .for_each(|(_, (sum, &p))| *sum += p as f64 * weight),
                            }
                        }
                    }
                },
            );
    }

    /// The MLP and logit inputs' scores from the (averaged) gradients, then every sum into
    /// `aggregate`, prompt by prompt, token by token. Returns the `ũ − u` array for the next
    /// pass to write its own into ([`PathEdgeScorer::new`]).
    pub(super) fn finish(
        self,
        gradient: &MeanGradients,
        aggregate: &mut Aggregate,
    ) -> Option<Array4<f32>> {
        let mut state = self.state.lock().expect("no scoring thread panicked");
        state.spare = Vec::new(); // the backward is done: no later layer to write into them
        let n_ups = self.ups.len();
        let mlp_columns: Vec<(usize, usize)> = (self.downs.iter().enumerate())
            .filter_map(|(j, d)| match d {
                Downstream::Mlp(l) => Some((j, *l)),
                _ => None,
            })
            .collect();
        // One product per token: every MLP's input and the logits', against every upstream.
        let mut columns: Vec<usize> = mlp_columns.iter().map(|&(j, _)| j).collect();
        columns.push(self.downs.len() - 1);
        debug_assert_eq!(self.downs[self.downs.len() - 1], Downstream::Logits);
        self.score(&mut state, n_ups, &columns, 1.0, |local, t, grads| {
            for (c, mut row) in grads.outer_iter_mut().enumerate() {
                row.assign(&match mlp_columns.get(c) {
                    Some(&(_, l)) => gradient.mlp_in[l].slice(s![local, t, ..]),
                    None => gradient.resid_final.slice(s![local, t, ..]),
                });
            }
        });
        for (local, sums) in state.sums.outer_iter().enumerate() {
            let b = self.offset + local;
            for t in 0..self.inputs.ids[local].len() {
                let row = aggregate.row(b, t, None);
                debug_assert_eq!(row.len(), self.n_components);
                for (&component, &value) in self.component_of_slot.iter().zip(sums.row(t)) {
                    row[component] += value;
                }
            }
        }
        state.delta.take()
    }
}

/// `target = reference − clean` (`−clean` where the reference is zero), without a temporary.
fn difference_into(
    reference: Option<ndarray::ArrayView1<f32>>,
    clean: ndarray::ArrayView1<f32>,
    mut target: ndarray::ArrayViewMut1<f32>,
) {
    match reference {
        Some(r) => ndarray::Zip::from(&mut target)
            .and(&r)
            .and(&clean)
            .for_each(|t, &r, &o| *t = r - o),
        None => ndarray::Zip::from(&mut target)
            .and(&clean)
            .for_each(|t, &o| *t = -o),
    }
}

impl HeadInputSink for PathEdgeScorer<'_, '_> {
    fn forward(&self, activations: &ActivationCache) {
        let mut state = self.state.lock().expect("no scoring thread panicked");
        // The clean run comes first; the integrated-gradient points reuse its ũ − u.
        if state.delta.is_none() {
            let recycled = state.recycled.take();
            state.delta = Some(self.deltas(activations, recycled));
        }
    }

    fn layer(&self, layer: usize, gradients: HeadInputGradients) {
        let mut state = self.state.lock().expect("no scoring thread panicked");
        state.held.push((layer, gradients));
        if !layer.is_multiple_of(LAYERS_PER_PRODUCT) {
            return;
        }
        // Layers `layer..` are held: one product per token for all their heads' inputs,
        // against the upstreams written before the last of them.
        let held = std::mem::take(&mut state.held);
        let last = held.iter().map(|h| h.0).max().expect("this layer");
        // Columns input by input, head by head within one (the order of a token's rows in
        // the gradients), so that each token's `(C, D)` is copied a block of `H` rows at a time.
        let mut columns = Vec::new(); // indices into `downs`
        let mut blocks = Vec::new(); // (held layer, input) per block of H columns
        for (k, (l, _)) in held.iter().enumerate() {
            for input in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                let mut block: Vec<(usize, usize)> = (self.head_columns[*l].iter())
                    .filter_map(|&j| match self.downs[j] {
                        Downstream::Head(h, which) if which == input => Some((h.head, j)),
                        _ => None,
                    })
                    .collect();
                block.sort_unstable();
                assert!(
                    block.iter().enumerate().all(|(i, &(head, _))| i == head),
                    "every head of the layer, once"
                );
                columns.extend(block.iter().map(|&(_, j)| j));
                blocks.push((k, input, block.len()));
            }
        }
        self.score(
            &mut state,
            self.before_layer[last],
            &columns,
            self.head_weight,
            |local, t, grads| {
                let mut first = 0;
                for &(k, input, n_heads) in &blocks {
                    let gradients = &held[k].1;
                    let per_head = match input {
                        HeadInput::Q => &gradients.q,
                        HeadInput::K => &gradients.k,
                        HeadInput::V => &gradients.v,
                    }; // (B, T, H, D)
                    let source = per_head.slice(s![local, t, .., ..]); // (H, D)
                    let mut target = grads.slice_mut(s![first..first + n_heads, ..]); // (H, D)
                    match (source.as_slice(), target.as_slice_mut()) {
                        (Some(source), Some(target)) => target.copy_from_slice(source),
                        _ => target.assign(&source),
                    }
                    first += n_heads;
                }
            },
        );
        for (_, gradients) in held {
            state.spare.extend([gradients.q, gradients.k, gradients.v]);
        }
    }

    fn recycled(&self, shape: (usize, usize, usize, usize)) -> Option<Array4<f32>> {
        let mut state = self.state.lock().expect("no scoring thread panicked");
        let fits = state.spare.iter().position(|a| a.dim() == shape)?;
        Some(state.spare.swap_remove(fits))
    }
}
