//! Evaluating circuits on a model: compile each circuit to a plan, run the full model, the
//! empty circuit and every distinct plan once, and collect per-prompt metrics.
//!
//! Cost: one forward pass over the evaluated prompts per distinct plan (the full model and the
//! empty circuit included), plus one forward pass over the reference prompts when the
//! ablation needs reference values, keeping only the activations the statistics read. When the
//! reference prompts are the evaluated ones, that pass's END logits are the full model's, which
//! then costs no pass of its own. Plans are memoized by content, so a circuit that compiles
//! to the same masks as one already run (a variant written another way, the empty circuit
//! itself) costs nothing.

use std::collections::{BTreeMap, HashMap};

use ndarray::{s, Array2, Axis};

use super::disk_cache::{CacheInputs, CacheKeys, DiskCache, Lookup};
use super::{per_prompt_metrics, scores, Scores, Targets};
use crate::ablate::{
    pairing, LabelAlignment, LabelReferenceBuilder, LayerActivations, PlanInterventions,
    ReferenceBuilder, ReferenceError, ReferenceNeeds, ReferenceShape, ReferenceValues,
};
use crate::data::check_reference_lengths;
use crate::model::{ForwardOptions, Interventions, Model, NoInterventions};
use crate::plan::{compile, Plan, PlanShape, PromptPositions};
use crate::resolve::bound::{
    AblationKind, BoundCircuit, EdgeAblation, Metric, Quantity, Scope, Settings,
};

/// The settings that change what a circuit's ablation computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AblationSettings {
    pub ablation: AblationKind,
    pub edge_ablation: EdgeAblation,
    pub scope: Scope,
}

impl From<&Settings> for AblationSettings {
    fn from(s: &Settings) -> Self {
        AblationSettings {
            ablation: s.ablation,
            edge_ablation: s.edge_ablation,
            scope: s.scope,
        }
    }
}

/// Per-prompt values of every metric for one run.
pub type PromptMetrics = BTreeMap<Metric, Vec<f64>>;

/// The prompts circuits are evaluated on.
pub struct EvalPrompts<'a> {
    /// Token ids, BOS included when the tokenizer adds it.
    pub ids: Vec<Vec<u32>>,
    pub targets: Vec<Targets>,
    /// How position names resolve in each prompt (owned, or borrowed: `Box::new(&prompt)`).
    pub positions: Vec<Box<dyn PromptPositions + 'a>>,
}

/// The model an evaluator runs: borrowed (tests, benches) or owned (a [`Session`]).
///
/// [`Session`]: super::session::Session
pub enum ModelHandle<'a> {
    Borrowed(&'a Model),
    Owned(Box<Model>),
}

impl std::ops::Deref for ModelHandle<'_> {
    type Target = Model;
    fn deref(&self) -> &Model {
        match self {
            ModelHandle::Borrowed(m) => m,
            ModelHandle::Owned(m) => m,
        }
    }
}

impl<'a> From<&'a Model> for ModelHandle<'a> {
    fn from(model: &'a Model) -> Self {
        ModelHandle::Borrowed(model)
    }
}

impl From<Model> for ModelHandle<'_> {
    fn from(model: Model) -> Self {
        ModelHandle::Owned(Box::new(model))
    }
}

/// Default of [`Evaluator::full_logits_budget`]: 256 MiB, 1,300 prompts of GPT-2's vocabulary.
pub const FULL_LOGITS_BUDGET: usize = 256 << 20;

/// Where a plan's batch finds the full model's END logits (for `kl`).
#[derive(Clone, Copy)]
enum FullLogits {
    /// In [`Evaluator::full_logits`].
    Kept,
    /// The plan is the full model.
    SameAsPlan,
    /// Recomputed for each batch (they do not fit the budget).
    PerBatch,
}

/// Runs circuits against one model, prompt set and reference set.
pub struct Evaluator<'a> {
    model: ModelHandle<'a>,
    settings: AblationSettings,
    prompts: EvalPrompts<'a>,
    reference_ids: Vec<Vec<u32>>,
    /// Prompts per forward call (bounds memory; results do not depend on it).
    pub batch_size: usize,
    reference: Option<(ReferenceNeeds, ReferenceValues)>,
    /// The full model's END logits `(B, V)`, kept between plans while they fit in
    /// `full_logits_budget`.
    full_logits: Option<Array2<f32>>,
    /// Largest full-model END logits kept in memory (bytes, default
    /// [`FULL_LOGITS_BUDGET`]); past it they are recomputed batch by batch beside each plan
    /// (one more forward pass per plan), so memory does not grow as prompts × vocabulary.
    pub full_logits_budget: usize,
    memo: HashMap<String, PromptMetrics>,
    /// Forward passes over a whole prompt set so far (evaluated or reference), for the cost
    /// guarantee in docs/performance.md.
    pub forward_passes: usize,
    /// Called after each forward batch with the number of prompts it held.
    pub on_batch: Option<Box<dyn Fn(usize) + 'a>>,
    /// Asked after each forward batch; `true` stops the work with
    /// [`EvalError::Interrupted`](super::error::EvalError::Interrupted). The Python binding's
    /// Ctrl-C: a notebook must not wait for a whole evaluation to end.
    pub interrupted: Option<Box<dyn Fn() -> bool + 'a>>,
    /// A folder where reference values and per-prompt metrics are cached between runs, keyed
    /// by content (see [`super::disk_cache`]); `None` disables the cache.
    pub disk_cache: Option<std::path::PathBuf>,
    /// The disk cache's size bound ([`super::disk_cache::DEFAULT_MAX_BYTES`] by default).
    pub disk_cache_max_bytes: u64,
    /// Called with what the disk cache did: entries read, rejected (and so recomputed),
    /// evicted (`--verbose`).
    pub on_cache_note: Option<super::disk_cache::OnNote<'a>>,
    /// The disk cache's key function, built on first use (after `label_alignment` is set).
    cache_keys: Option<CacheKeys>,
    /// Reference needs of every plan compiled so far, so one reference pass serves them all.
    planned_needs: ReferenceNeeds,
    /// `align by label`: the slots of every evaluated and reference prompt. `None` aligns by
    /// token index (the default).
    pub label_alignment: Option<LabelAlignment>,
}

/// Results of evaluating some circuits: per-prompt metrics of the full model, the empty
/// circuit and each circuit.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub full: PromptMetrics,
    pub empty: PromptMetrics,
    /// In the order asked for.
    pub circuits: Vec<(String, PromptMetrics)>,
}

impl Evaluation {
    pub fn circuit(&self, name: &str) -> Option<&PromptMetrics> {
        self.circuits
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }

    /// Full / circuit / empty means of `metric` and the faithfulness they give.
    pub fn scores(&self, circuit: &str, metric: Metric) -> Option<Scores> {
        let c = self.circuit(circuit)?;
        Some(scores(
            &self.full[&metric],
            &c[&metric],
            &self.empty[&metric],
        ))
    }

    /// A quantity an expectation reads; `None` when undefined (faithfulness when full and
    /// empty agree, ratio when the full model's metric is 0) or the circuit is unknown.
    pub fn quantity(&self, circuit: &str, quantity: Quantity, metric: Metric) -> Option<f64> {
        let mean = |m: &PromptMetrics, metric: Metric| super::mean(&m[&metric]);
        match quantity {
            Quantity::Faithfulness => self.scores(circuit, metric)?.faithfulness,
            Quantity::Ratio => self.scores(circuit, metric)?.ratio,
            Quantity::Metric(m) => Some(mean(self.circuit(circuit)?, m)),
            Quantity::Full(m) => Some(mean(&self.full, m)),
            Quantity::Empty(m) => Some(mean(&self.empty, m)),
        }
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(
        model: impl Into<ModelHandle<'a>>,
        settings: AblationSettings,
        prompts: EvalPrompts<'a>,
        reference_ids: Vec<Vec<u32>>,
    ) -> Evaluator<'a> {
        Evaluator {
            model: model.into(),
            settings,
            prompts,
            reference_ids,
            batch_size: 32,
            reference: None,
            full_logits: None,
            full_logits_budget: FULL_LOGITS_BUDGET,
            memo: HashMap::new(),
            forward_passes: 0,
            on_batch: None,
            interrupted: None,
            disk_cache: None,
            disk_cache_max_bytes: super::disk_cache::DEFAULT_MAX_BYTES,
            on_cache_note: None,
            cache_keys: None,
            planned_needs: ReferenceNeeds::default(),
            label_alignment: None,
        }
    }

    /// The model the evaluator runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The settings that change what an ablation computes.
    pub fn settings(&self) -> AblationSettings {
        self.settings
    }

    /// The evaluated prompts.
    pub fn prompts(&self) -> &EvalPrompts<'a> {
        &self.prompts
    }

    /// The plan that keeps everything: the full model.
    pub fn full_plan(&self) -> Plan {
        Plan::full(self.shape(), &self.prompt_lens(), self.settings.scope)
    }

    /// The plan that keeps nothing: the empty circuit.
    pub fn empty_plan(&self) -> Plan {
        Plan::empty(self.shape(), &self.prompt_lens(), self.settings.scope)
    }

    fn shape(&self) -> PlanShape {
        PlanShape {
            n_layers: self.model.config.n_layers,
            n_heads: self.model.config.n_heads,
            residual: self.model.config.residual,
        }
    }

    fn prompt_lens(&self) -> Vec<usize> {
        self.prompts.ids.iter().map(Vec::len).collect()
    }

    /// Compiles a circuit for the evaluated prompts.
    pub fn compile(&self, circuit: &BoundCircuit) -> miette::Result<Plan> {
        let positions: Vec<&dyn PromptPositions> =
            self.prompts.positions.iter().map(|p| p.as_ref()).collect();
        // A QK edge naming a key a sliding window hides is an error, not an edge of nothing.
        let windows = &self.model.config.attention_windows;
        crate::plan::check_windows(circuit, windows, &positions)?;
        let mut plan = compile(circuit, self.settings.scope, self.shape(), &positions)?;
        crate::plan::keep_keys_outside_windows(&mut plan, windows);
        Ok(plan)
    }

    /// Checks reference lengths before any forward pass (a bad dataset costs nothing); under
    /// `align by label`, that every slot (and, once plans with QK edges are known, every slot
    /// pair) of the evaluated prompts is in the reference set.
    pub fn check_reference(&self) -> miette::Result<()> {
        if self.settings.ablation == AblationKind::Zero {
            return Ok(());
        }
        if self.reference_ids.is_empty() {
            return Err(ReferenceError::Empty.into());
        }
        let Some(pairing) = pairing(self.settings.ablation) else {
            return Ok(());
        };
        let ref_lens: Vec<usize> = self.reference_ids.iter().map(Vec::len).collect();
        check_reference_lengths(
            pairing,
            self.label_alignment.is_some(),
            &self.prompt_lens(),
            &ref_lens,
            &|b| self.prompts.positions[b].describe(),
            &|r| format!("reference prompt {r}"),
        )?;
        if let Some(alignment) = &self.label_alignment {
            // By slot, not by index: lengths may differ, every slot must be covered.
            let with_pairs = !self.planned_needs.edge_heads.is_empty();
            alignment.check(self.settings.ablation, with_pairs)?;
        }
        Ok(())
    }

    /// Evaluates `circuits` (plus the full model and the empty circuit).
    pub fn evaluate(&mut self, circuits: &[&BoundCircuit]) -> miette::Result<Evaluation> {
        // Compile everything first: a position error in the last circuit costs no forward pass.
        let plans: Vec<Plan> = circuits
            .iter()
            .map(|c| self.compile(c))
            .collect::<miette::Result<_>>()?;
        let empty_plan = self.empty_plan();

        // The reference pass runs lazily (a run whose results are all cached needs none), but
        // once, covering every plan.
        for plan in &plans {
            self.planned_needs
                .edge_heads
                .extend(self.edge_term_heads(plan));
            self.planned_needs.head_outputs |= plan.has_path_edges();
        }
        self.check_reference()?;

        let full = self.run(&self.full_plan())?;
        let empty = self.run(&empty_plan)?;
        let mut results = Vec::with_capacity(circuits.len());
        for (circuit, plan) in circuits.iter().zip(&plans) {
            results.push((circuit.name.clone(), self.run(plan)?));
        }
        Ok(Evaluation {
            full,
            empty,
            circuits: results,
        })
    }

    /// The heads whose reference QK-edge terms `plan` reads: those with QK edges under
    /// edge-mean ablation; knockout reads none (and so needs no slot pair under `align by
    /// label`).
    fn edge_term_heads(
        &self,
        plan: &Plan,
    ) -> std::collections::BTreeSet<crate::resolve::bound::HeadId> {
        if self.settings.edge_ablation == EdgeAblation::EdgeMean {
            plan.edge_heads()
        } else {
            Default::default()
        }
    }

    /// The reference values covering `needs` (and every plan evaluated so far): from memory,
    /// the disk cache or one forward pass over the reference prompts.
    pub fn reference_values_for(
        &mut self,
        needs: &ReferenceNeeds,
    ) -> miette::Result<&ReferenceValues> {
        self.check_reference()?;
        self.ensure_reference(needs)?;
        Ok(&self.reference.as_ref().expect("ensured above").1)
    }

    /// Builds the reference values if they are missing or do not cover `needs`.
    fn ensure_reference(&mut self, needs: &ReferenceNeeds) -> miette::Result<()> {
        if let Some((have, values)) = &self.reference {
            if values.covers(needs) {
                return Ok(());
            }
            let mut union = have.clone();
            union.edge_heads.extend(needs.edge_heads.iter().copied());
            union.head_outputs |= needs.head_outputs;
            union.source_attention |= needs.source_attention;
            let values = self.reference_values(&union)?;
            self.reference = Some((union, values));
            return Ok(());
        }
        let values = self.reference_values(needs)?;
        self.reference = Some((needs.clone(), values));
        Ok(())
    }

    /// Reference values for `needs`: from the disk cache when present, else one forward pass.
    fn reference_values(&mut self, needs: &ReferenceNeeds) -> miette::Result<ReferenceValues> {
        let n_eval = self.prompts.ids.len();
        if self.settings.ablation == AblationKind::Zero {
            return Ok(ReferenceValues::zero(n_eval));
        }
        let cache = self.disk_cache();
        let shape = self.reference_shape(needs);
        if let Some((cache, keys)) = &cache {
            match cache.read_reference(keys, needs, &shape) {
                Lookup::Hit(values) => {
                    self.cache_note("read reference values");
                    return Ok(values);
                }
                Lookup::Absent => {}
                Lookup::Rejected(why) => self.cache_note(&format!("recomputing: {why}")),
            }
        }
        let values = self.reference_forward(needs)?;
        if let Some((cache, keys)) = &cache {
            for note in cache.write_reference(keys, needs, &shape, &values) {
                self.cache_note(&note);
            }
        }
        Ok(values)
    }

    /// The shapes of reference values for `needs`, before any forward pass.
    fn reference_shape(&self, needs: &ReferenceNeeds) -> ReferenceShape {
        let config = &self.model.config;
        let longest = |prompts: &[Vec<u32>]| prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (n_positions, n_sources) = match &self.label_alignment {
            // One source per slot layout of the evaluated prompts, as long as the longest.
            Some(_) => (longest(&self.prompts.ids), None),
            None => (
                longest(&self.reference_ids),
                Some(match self.settings.ablation {
                    AblationKind::Mean => 1,
                    _ => self.reference_ids.len(),
                }),
            ),
        };
        ReferenceShape {
            kind: self.settings.ablation,
            n_prompts: self.prompts.ids.len(),
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            d_head: config.d_head,
            d_model: config.d_model,
            n_positions,
            n_sources,
            edge_heads: needs.edge_heads.iter().copied().collect(),
            head_outputs: needs.head_outputs,
            source_attention: needs.source_attention
                && self.settings.ablation == AblationKind::Resample
                && self.label_alignment.is_none(),
        }
    }

    fn cache_note(&self, note: &str) {
        if let Some(f) = &self.on_cache_note {
            f(note);
        }
    }

    /// After a forward batch of `prompts` prompts: the progress callback, then the interrupt
    /// check.
    fn batch_done(&self, prompts: usize) -> miette::Result<()> {
        if let Some(f) = &self.on_batch {
            f(prompts);
        }
        if self.interrupted.as_ref().is_some_and(|stop| stop()) {
            return Err(super::error::EvalError::Interrupted.into());
        }
        Ok(())
    }

    /// One cached forward pass over the reference prompts, in batches.
    fn reference_forward(&mut self, needs: &ReferenceNeeds) -> miette::Result<ReferenceValues> {
        let n_eval = self.prompts.ids.len();
        let ref_lens: Vec<usize> = self.reference_ids.iter().map(Vec::len).collect();
        // Built (and, under label alignment, every slot checked) before the forward pass.
        let mut builder = match &self.label_alignment {
            Some(alignment) => AnyBuilder::Label(LabelReferenceBuilder::new(
                self.settings.ablation,
                needs.clone(),
                alignment,
            )?),
            None => AnyBuilder::Position(ReferenceBuilder::new(
                self.settings.ablation,
                needs.clone(),
                n_eval,
                &ref_lens,
            )),
        };
        // The pass keeps only what the statistics read (no per-head writes without path edges,
        // attention patterns only of layers with QK-edge heads).
        let selection = needs.cache_selection(self.model.config.n_layers);
        // Over the evaluated prompts themselves, this pass's END logits are the full model's,
        // the same bits as its own pass (no hooks; a row of a product does not depend on the
        // rows beside it, `model::linalg::kernel_for`): kept, they save that pass.
        let keep_full_logits =
            self.full_logits.is_none() && self.full_logits_fit() && self.reference_is_evaluated();
        let mut full_logits = None;
        let mut start = 0;
        for chunk in self.reference_ids.chunks(self.batch_size.max(1)) {
            let (logits, kept) =
                self.model
                    .forward_selected(chunk, &selection, &NoInterventions)?;
            let layers: Vec<LayerActivations> = kept
                .layers
                .iter()
                .map(|layer| LayerActivations {
                    z: layer.z.view(),
                    pattern: layer.pattern.as_ref().map(|a| a.view()),
                    v: layer.v_by_query_head.as_ref().map(|a| a.view()),
                    mlp_out: layer.mlp_out.view(),
                    head_out: layer.head_out.as_ref().map(|a| a.view()),
                })
                .collect();
            match &mut builder {
                AnyBuilder::Position(b) => {
                    b.add_embed_batch(kept.embed.view());
                    b.add_batch(&layers)
                }
                AnyBuilder::Label(b) => {
                    b.add_embed_batch(kept.embed.view());
                    b.add_batch(&layers)
                }
            }
            if keep_full_logits {
                put_rows(
                    &mut full_logits,
                    n_eval,
                    start,
                    logits.index_axis(Axis(1), 0),
                );
            }
            start += chunk.len();
            self.batch_done(chunk.len())?;
        }
        self.forward_passes += 1;
        if keep_full_logits {
            self.full_logits = full_logits;
        }
        Ok(match builder {
            AnyBuilder::Position(b) => b.finish(),
            AnyBuilder::Label(b) => b.finish(),
        })
    }

    /// END logits `(B, V)` of the evaluated prompts under `hooks_for(batch range)`.
    fn end_logits<'h>(
        &mut self,
        hooks_for: &dyn Fn(std::ops::Range<usize>) -> Box<dyn Interventions + 'h>,
    ) -> miette::Result<Array2<f32>> {
        let n = self.prompts.ids.len();
        let batch = self.batch_size.max(1);
        let mut logits: Option<Array2<f32>> = None;
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let hooks = hooks_for(start..end);
            let out = self.model.forward(
                &self.prompts.ids[start..end],
                &ForwardOptions::default(),
                hooks.as_ref(),
            )?;
            put_rows(&mut logits, n, start, out.logits.index_axis(Axis(1), 0));
            self.batch_done(end - start)?;
        }
        self.forward_passes += 1;
        Ok(logits.unwrap_or_else(|| Array2::zeros((0, 0))))
    }

    /// Per-prompt metrics of the evaluated prompts under `hooks_for(batch range)`, computed
    /// batch by batch: only one batch of END logits `(b, V)` is alive at a time (two when the
    /// full model's are recomputed beside it), besides the kept full-model logits. Metrics are
    /// per row, so they are the same bits whatever the batches.
    fn metrics_by_batch<'h>(
        &mut self,
        hooks_for: &dyn Fn(std::ops::Range<usize>) -> Box<dyn Interventions + 'h>,
        full: FullLogits,
    ) -> miette::Result<PromptMetrics> {
        let n = self.prompts.ids.len();
        let batch = self.batch_size.max(1);
        let mut metrics: PromptMetrics = super::ALL_METRICS
            .iter()
            .map(|&m| (m, Vec::with_capacity(n)))
            .collect();
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let ids = &self.prompts.ids[start..end];
            let hooks = hooks_for(start..end);
            let out = self
                .model
                .forward(ids, &ForwardOptions::default(), hooks.as_ref())?;
            let rows = out.logits.index_axis(Axis(1), 0); // (b, V)
            let recomputed;
            let full_rows = match full {
                FullLogits::Kept => self
                    .full_logits
                    .as_ref()
                    .expect("kept")
                    .slice(s![start..end, ..]),
                FullLogits::SameAsPlan => rows.view(),
                FullLogits::PerBatch => {
                    let out =
                        self.model
                            .forward(ids, &ForwardOptions::default(), &NoInterventions)?;
                    recomputed = out.logits;
                    recomputed.index_axis(Axis(1), 0) // (b, V)
                }
            };
            let batch_metrics =
                per_prompt_metrics(rows, full_rows, &self.prompts.targets[start..end]);
            for (metric, values) in batch_metrics {
                metrics
                    .get_mut(&metric)
                    .expect("every metric")
                    .extend(values);
            }
            self.batch_done(end - start)?;
        }
        self.forward_passes += match full {
            FullLogits::PerBatch => 2,
            _ => 1,
        };
        Ok(metrics)
    }

    /// Per-prompt metrics of one plan; memoized by the plan's content.
    pub fn run(&mut self, plan: &Plan) -> miette::Result<PromptMetrics> {
        let key = plan.content_key();
        if let Some(hit) = self.memo.get(&key) {
            return Ok(hit.clone());
        }
        let cache = self.disk_cache();
        if let Some((cache, keys)) = &cache {
            match cache.read_metrics(keys, &key, self.prompts.ids.len()) {
                Lookup::Hit(hit) => {
                    self.cache_note("read per-prompt metrics of a plan");
                    self.memo.insert(key, hit.clone());
                    return Ok(hit);
                }
                Lookup::Absent => {}
                Lookup::Rejected(why) => self.cache_note(&format!("recomputing: {why}")),
            }
        }
        // What the reference values must cover for this plan (and every plan planned).
        let mut needs = self.planned_needs.clone();
        if !plan.is_identity() {
            needs.edge_heads.extend(self.edge_term_heads(plan));
            needs.head_outputs |= plan.has_path_edges();
        }
        if self.full_logits.is_none() && self.full_logits_fit() {
            if self.reference.is_none()
                && self.settings.ablation != AblationKind::Zero
                && self.reference_is_evaluated()
            {
                // The reference pass over the evaluated prompts yields the full model's logits
                // too (unless its values come from the disk cache): run it first.
                self.ensure_reference(&needs)?;
            }
            if self.full_logits.is_none() {
                let full = self.end_logits(&|_| Box::new(NoInterventions))?;
                self.full_logits = Some(full);
            }
        }
        let full = match (&self.full_logits, plan.is_identity()) {
            (Some(_), _) => FullLogits::Kept,
            (None, true) => FullLogits::SameAsPlan,
            (None, false) => FullLogits::PerBatch,
        };
        let metrics = if let (true, Some(kept)) = (plan.is_identity(), &self.full_logits) {
            // The full model's logits are the kept ones: no forward pass.
            per_prompt_metrics(kept.view(), kept.view(), &self.prompts.targets)
        } else if plan.is_identity() {
            self.metrics_by_batch(&|_| Box::new(NoInterventions), full)?
        } else {
            self.ensure_reference(&needs)?;
            let reference = self.reference.take().expect("ensured above");
            let edge_ablation = self.settings.edge_ablation;
            let result = self.metrics_by_batch(
                &|prompts| {
                    Box::new(PlanInterventions {
                        plan,
                        reference: &reference.1,
                        edge_ablation,
                        prompts,
                    })
                },
                full,
            );
            self.reference = Some(reference);
            result?
        };
        if let Some((cache, keys)) = &cache {
            for note in cache.write_metrics(keys, &key, &metrics) {
                self.cache_note(&note);
            }
        }
        self.memo.insert(key, metrics.clone());
        Ok(metrics)
    }

    /// Whether the full model's END logits of every evaluated prompt fit in
    /// `full_logits_budget` (else they are recomputed beside each plan's batch).
    fn full_logits_fit(&self) -> bool {
        let n = self.prompts.ids.len();
        n.saturating_mul(self.model.n_embedding_rows()) * 4 <= self.full_logits_budget
    }

    /// Whether the reference prompts are the evaluated ones, in the same order (`reference
    /// D.clean`): then one forward pass gives both the reference statistics and the full
    /// model's logits.
    fn reference_is_evaluated(&self) -> bool {
        self.reference_ids == self.prompts.ids
    }

    /// The disk cache and its key function, when a cache folder is set.
    fn disk_cache(&mut self) -> Option<(DiskCache, CacheKeys)> {
        let dir = self.disk_cache.clone()?;
        let keys = match &self.cache_keys {
            Some(keys) => keys.clone(),
            None => {
                let keys = CacheKeys::new(&CacheInputs {
                    config: &self.model.config,
                    weights_sha256: self.model.weights_hash(),
                    tokenizer_sha256: self.model.tokenizer_hash(),
                    settings: self.settings,
                    evaluated: &self.prompts.ids,
                    targets: &self.prompts.targets,
                    reference: &self.reference_ids,
                    label_alignment: self.label_alignment.as_ref(),
                });
                self.cache_keys = Some(keys.clone());
                keys
            }
        };
        Some((
            DiskCache {
                dir,
                max_bytes: self.disk_cache_max_bytes,
            },
            keys,
        ))
    }
}

/// Writes one batch's END logits `rows` `(b, V)` at rows `start..` of `all` `(n, V)`, made on
/// the first batch.
fn put_rows(all: &mut Option<Array2<f32>>, n: usize, start: usize, rows: ndarray::ArrayView2<f32>) {
    let all = all.get_or_insert_with(|| Array2::zeros((n, rows.ncols())));
    all.slice_mut(s![start..start + rows.nrows(), ..])
        .assign(&rows);
}

/// The reference statistics of the alignment in force.
enum AnyBuilder {
    Position(ReferenceBuilder),
    Label(LabelReferenceBuilder),
}
