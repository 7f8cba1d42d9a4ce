//! The incremental engine: each candidate's ablation recomputes only the rows and layers it can
//! change, many candidates' prompts stacked per batch ([`crate::model::resume`]).
//!
//! A candidate of layer `l` at query row `q` of prompt `b` changes layer `l`'s output at row
//! `q` only: for a head, `z_h[q]` becomes its ablated value and the attention output there is
//! `o(z[q])`, then the MLP of row `q` runs on the new `resid_mid[q]`; for an MLP, its output at
//! `q` becomes the reference value. From layer `l + 1` on, rows `q..len` are recomputed, reading
//! rows `< q` from the base run. Prompts without the candidate's slot keep the base metrics.

use ndarray::{s, Array2, ArrayViewMut2, ArrayViewMut3, Axis};

use super::Candidate;
use crate::ablate::{PlanInterventions, ReferenceValues};
use crate::attribute::Component;
use crate::measure::{per_prompt_metric, PromptMetrics, Session, Targets};
use crate::model::resume::{NoRowEdits, ResumeItem, RowEdits};
use crate::model::{ForwardOptions, NoInterventions};
use crate::plan::Plan;
use crate::resolve::bound::HeadId;

/// Stacked rows per resumed batch: large enough that the products stay efficient, small
/// enough that a batch's MLP activations (rows × 4·D floats) stay in the hundreds of MB.
const ROW_BUDGET: usize = 4096;

/// Prompts per forward of the base run.
const BASE_BATCH: usize = 32;

/// Computes the per-prompt metrics of every candidate, calling `finished(i, metrics)` for
/// candidate `candidates[i]` as soon as its batch is done (so results can be cached as they
/// come: an interrupted scan loses at most one batch).
pub(super) fn run(
    session: &Session,
    base_plan: &Plan,
    reference: &ReferenceValues,
    base_metrics: &PromptMetrics,
    candidates: &[&Candidate],
    finished: &mut dyn FnMut(usize, PromptMetrics),
) -> miette::Result<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let model = session.model();
    let clean = session.clean_prompts();
    let ids: Vec<Vec<u32>> = clean.iter().map(|p| p.ids.clone()).collect();
    let targets = session.targets().to_vec();
    let edge_ablation = session.settings().edge_ablation;
    let base = model.resume_base(
        &ids,
        &|prompts| {
            Box::new(PlanInterventions {
                plan: base_plan,
                reference,
                edge_ablation,
                prompts,
            })
        },
        BASE_BATCH,
    )?;
    // The full model's END logits (kl's reference), `(B, V)`.
    let mut full_logits: Option<Array2<f32>> = None;
    for start in (0..ids.len()).step_by(BASE_BATCH) {
        let end = (start + BASE_BATCH).min(ids.len());
        let out = model.forward(
            &ids[start..end],
            &ForwardOptions::default(),
            &NoInterventions,
        )?;
        let rows = out.logits.index_axis(Axis(1), 0).to_owned(); // (b, V)
        let all = full_logits.get_or_insert_with(|| Array2::zeros((ids.len(), rows.ncols())));
        all.slice_mut(s![start..end, ..]).assign(&rows);
    }
    let full_logits = full_logits.expect("at least one prompt");

    // Batches of candidates of one layer, in layer order.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| (candidates[i].layer(), i));
    let rows_of = |i: usize| -> usize {
        candidates[i]
            .rows
            .iter()
            .map(|&(b, q, _)| base.lengths[b] - q)
            .sum()
    };
    let mut batch: Vec<usize> = Vec::new();
    let mut batch_rows = 0;
    let mut pending: Vec<Vec<usize>> = Vec::new();
    for &i in &order {
        let same_layer = batch
            .first()
            .is_none_or(|&j| candidates[j].layer() == candidates[i].layer());
        if !batch.is_empty() && (!same_layer || batch_rows + rows_of(i) > ROW_BUDGET) {
            pending.push(std::mem::take(&mut batch));
            batch_rows = 0;
        }
        batch.push(i);
        batch_rows += rows_of(i);
    }
    pending.push(batch);

    let context = Context {
        session,
        base_plan,
        reference,
        base: &base,
    };
    for batch in pending {
        let item_metrics = context.run_batch(candidates, &batch, &full_logits, &targets);
        let mut next = item_metrics.into_iter();
        for &i in &batch {
            // Only the file's metric is computed for the prompts the candidate touches: the
            // others are NaN there (never read: a scan reports the file's metric; its cache
            // entries are its own, keyed by the metric).
            let mut metrics = base_metrics.clone();
            let metric = session.settings().metric;
            for (&m, values) in metrics.iter_mut() {
                if m != metric {
                    for &(b, _, _) in &candidates[i].rows {
                        values[b] = f64::NAN;
                    }
                }
            }
            for &(b, _, _) in &candidates[i].rows {
                let item = next.next().expect("one result per item");
                for (metric, value) in item {
                    metrics.get_mut(&metric).expect("every metric")[b] = value;
                }
            }
            finished(i, metrics);
        }
    }
    Ok(())
}

struct Context<'a> {
    session: &'a Session<'a>,
    base_plan: &'a Plan,
    reference: &'a ReferenceValues,
    base: &'a crate::model::resume::ResumeBase,
}

impl Context<'_> {
    /// Per item (each candidate's prompts in order, candidates in `batch` order), the file's
    /// metric.
    fn run_batch(
        &self,
        candidates: &[&Candidate],
        batch: &[usize],
        full_logits: &Array2<f32>,
        targets: &[Targets],
    ) -> Vec<Vec<(crate::resolve::bound::Metric, f64)>> {
        let model = self.session.model();
        let config = &model.config;
        let (n_heads, d_head, d_model) = (config.n_heads, config.d_head, config.d_model);
        let layer = candidates[batch[0]].layer();
        let base_layer = &self.base.layers[layer];
        let mut items: Vec<ResumeItem> = Vec::new();
        // The candidate's own change at layer `layer`, row q: per item, what it is.
        let mut heads: Vec<(usize, Vec<f32>)> = Vec::new(); // (item, z row (H·d))
        let mut mlp_rows: Vec<usize> = Vec::new(); // items of MLP candidates
        for &i in batch {
            let c = candidates[i];
            for &(b, q, k) in &c.rows {
                let item = items.len();
                items.push(ResumeItem {
                    prompt: b,
                    first_row: q,
                });
                match c.component {
                    Component::Head(h) => {
                        let mut z: Vec<f32> = base_layer
                            .z
                            .slice(s![b, q, .., ..])
                            .iter()
                            .copied()
                            .collect();
                        let ablated = self.ablated_z(h, b, q, k);
                        z[h.head * d_head..(h.head + 1) * d_head].copy_from_slice(&ablated);
                        heads.push((item, z));
                    }
                    Component::Mlp(_) => mlp_rows.push(item),
                    Component::Path { .. } => unreachable!("no path-edge candidates"),
                }
            }
        }
        // Layer `layer`'s output at each item's row q, `(I, D)`.
        let mut changed = Array2::<f32>::zeros((items.len(), d_model));
        if !heads.is_empty() {
            let z = Array2::from_shape_fn((heads.len(), n_heads * d_head), |(r, c)| heads[r].1[c]); // (I_h, H·d)
            let attn = model.attention_output_rows(layer, z.view()); // (I_h, D)
            let resid_pre = Array2::from_shape_fn((heads.len(), d_model), |(r, c)| {
                let it = items[heads[r].0];
                base_layer.resid_pre[[it.prompt, it.first_row, c]]
            }); // (I_h, D)
            let resid_mid = &resid_pre + &attn; // (I_h, D)
            let mut mlp = model.mlp_rows(layer, resid_pre.view(), resid_mid.view()); // (I_h, D)
            for (r, &(item, _)) in heads.iter().enumerate() {
                let it = items[item];
                if !self.base_plan.mlp_keep[layer][[it.prompt, it.first_row]] {
                    self.ablated_mlp(layer, it.prompt, it.first_row, mlp.row_mut(r));
                }
                let row = &resid_mid.row(r) + &mlp.row(r);
                changed.row_mut(item).assign(&row);
            }
        }
        for &item in &mlp_rows {
            let it = items[item];
            let mut mlp = ndarray::Array1::<f32>::zeros(d_model);
            self.ablated_mlp(layer, it.prompt, it.first_row, mlp.view_mut());
            let row = &base_layer.resid_mid.slice(s![it.prompt, it.first_row, ..]) + &mlp;
            changed.row_mut(item).assign(&row);
        }
        // Rows q..len entering layer + 1: the base run's, with row q changed.
        let entering = self.base.resid_entering(layer + 1);
        let n_rows: usize = items
            .iter()
            .map(|it| self.base.lengths[it.prompt] - it.first_row)
            .sum();
        let mut resid = Array2::<f32>::zeros((n_rows, d_model)); // (N, D)
        let mut at = 0;
        for (item, it) in items.iter().enumerate() {
            let len = self.base.lengths[it.prompt];
            let rows = len - it.first_row;
            resid
                .slice_mut(s![at..at + rows, ..])
                .assign(&entering.slice(s![it.prompt, it.first_row..len, ..]));
            resid.row_mut(at).assign(&changed.row(item));
            at += rows;
        }
        let edits = BaseEdits {
            plan: self.base_plan,
            reference: self.reference,
            items: &items,
        };
        let edits: &dyn RowEdits = if self.base_plan.is_identity() {
            &NoRowEdits
        } else {
            &edits
        };
        let logits = model.resume_end_logits(self.base, layer + 1, &items, resid, edits); // (I, V)
        let prompts: Vec<usize> = items.iter().map(|it| it.prompt).collect();
        let full_rows = full_logits.select(Axis(0), &prompts); // (I, V)
        let item_targets: Vec<Targets> = prompts.iter().map(|&b| targets[b]).collect();
        let metric = self.session.settings().metric;
        let values = per_prompt_metric(metric, logits.view(), full_rows.view(), &item_targets);
        values.into_iter().map(|v| vec![(metric, v)]).collect()
    }

    /// Head `h`'s `z` at query `q` of prompt `b` with the candidate ablated: the node's
    /// reference value, or (`key` given) with that one QK-edge term removed by edge mean, in
    /// the same two forms and the same f64 sums as the plan's hooks
    /// (`ablate::hooks::PlanInterventions::edge_mean`), so the value is theirs bit for bit.
    fn ablated_z(&self, h: HeadId, b: usize, q: usize, key: Option<usize>) -> Vec<f32> {
        let base_layer = &self.base.layers[h.layer];
        let d = base_layer.z.dim().3;
        let mut out = vec![0f64; d];
        let Some(removed) = key else {
            self.reference.add_z(h.layer, b, q, h.head, &mut out);
            return out.iter().map(|&x| x as f32).collect();
        };
        let mut term = vec![0f64; d];
        let mut add_difference = |k: usize, sign: f64, out: &mut [f64]| {
            term.iter_mut().for_each(|x| *x = 0.0);
            self.reference.add_edge_term(h, b, q, k, &mut term);
            let a = base_layer.pattern[[b, h.head, q, k]] as f64;
            for i in 0..d {
                out[i] += sign * (a * base_layer.v[[b, k, h.head, i]] as f64 - term[i]);
            }
        };
        // Every key but one is kept: q of q + 1 keys.
        let few_kept = q * 2 <= q + 1;
        if few_kept {
            self.reference.add_edge_base(h, b, q, &mut out);
            for k in (0..=q).filter(|&k| k != removed) {
                add_difference(k, 1.0, &mut out);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(base_layer.z.slice(s![b, q, h.head, ..])) {
                *o = x as f64;
            }
            add_difference(removed, -1.0, &mut out);
        }
        out.iter().map(|&x| x as f32).collect()
    }

    /// The ablated output of MLP `layer` at `t` of prompt `b` (its reference value; 0 under
    /// zero ablation), written into `out` `(D,)`.
    fn ablated_mlp(&self, layer: usize, b: usize, t: usize, mut out: ndarray::ArrayViewMut1<f32>) {
        match self.reference.mlp_out(layer, b, t) {
            Some(r) => out.assign(&r),
            None => out.fill(0.0),
        }
    }
}

/// The base plan's own node and MLP ablations, applied to the rows a resumed forward
/// recomputes (as [`PlanInterventions`] applies them in a whole forward).
struct BaseEdits<'a> {
    plan: &'a Plan,
    reference: &'a ReferenceValues,
    items: &'a [ResumeItem],
}

impl RowEdits for BaseEdits<'_> {
    fn edit_z(&self, layer: usize, item: usize, first_row: usize, z: &mut ArrayViewMut3<f32>) {
        let b = self.items[item].prompt;
        let keep = &self.plan.head_keep[layer]; // (B, T, H)
        let (rows, n_heads, d) = z.dim();
        let mut replacement = vec![0f64; d];
        for r in 0..rows {
            for h in 0..n_heads {
                if keep[[b, first_row + r, h]] {
                    continue;
                }
                replacement.iter_mut().for_each(|x| *x = 0.0);
                self.reference
                    .add_z(layer, b, first_row + r, h, &mut replacement);
                for (dst, &x) in z.slice_mut(s![r, h, ..]).iter_mut().zip(&replacement) {
                    *dst = x as f32;
                }
            }
        }
    }

    fn edit_mlp_out(
        &self,
        layer: usize,
        item: usize,
        first_row: usize,
        out: &mut ArrayViewMut2<f32>,
    ) {
        let b = self.items[item].prompt;
        for r in 0..out.nrows() {
            if self.plan.mlp_keep[layer][[b, first_row + r]] {
                continue;
            }
            let mut dst = out.row_mut(r);
            match self.reference.mlp_out(layer, b, first_row + r) {
                Some(v) => dst.assign(&v),
                None => dst.fill(0.0),
            }
        }
    }
}
