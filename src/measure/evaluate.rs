//! Evaluating circuits on a model: compile each circuit to a plan, run the full model, the
//! empty circuit and every distinct plan once, and collect per-prompt metrics.
//!
//! Cost: one forward pass over the evaluated prompts per distinct plan (the full model and the
//! empty circuit included), plus one cached forward pass over the reference prompts when the
//! ablation needs reference values. Plans are memoized by content, so a circuit that compiles
//! to the same masks as one already run (a variant written another way, the empty circuit
//! itself) costs nothing.

use std::collections::{BTreeMap, HashMap};

use ndarray::{s, Array2, Axis};

use super::{per_prompt_metrics, scores, Scores, Targets};
use crate::ablate::{
    check_lengths, LabelAlignment, LabelReferenceBuilder, LayerActivations, PlanInterventions,
    ReferenceBuilder, ReferenceNeeds, ReferenceValues,
};
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
    /// How position names resolve in each prompt.
    pub positions: Vec<&'a dyn PromptPositions>,
}

/// Runs circuits against one model, prompt set and reference set.
pub struct Evaluator<'a> {
    model: &'a Model,
    settings: AblationSettings,
    prompts: EvalPrompts<'a>,
    reference_ids: Vec<Vec<u32>>,
    /// Prompts per forward call (bounds memory; results do not depend on it).
    pub batch_size: usize,
    reference: Option<(ReferenceNeeds, ReferenceValues)>,
    full_logits: Option<Array2<f32>>,
    memo: HashMap<String, PromptMetrics>,
    /// Forward passes over a whole prompt set so far (evaluated or reference), for the cost
    /// guarantee in docs/performance.md.
    pub forward_passes: usize,
    /// Called after each forward batch with the number of prompts it held.
    pub on_batch: Option<Box<dyn Fn(usize) + 'a>>,
    /// A folder where reference values are cached between runs, keyed by content (see
    /// [`Evaluator::reference_cache_key`]); `None` disables the cache.
    pub disk_cache: Option<std::path::PathBuf>,
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
        model: &'a Model,
        settings: AblationSettings,
        prompts: EvalPrompts<'a>,
        reference_ids: Vec<Vec<u32>>,
    ) -> Evaluator<'a> {
        Evaluator {
            model,
            settings,
            prompts,
            reference_ids,
            batch_size: 32,
            reference: None,
            full_logits: None,
            memo: HashMap::new(),
            forward_passes: 0,
            on_batch: None,
            disk_cache: None,
            planned_needs: ReferenceNeeds::default(),
            label_alignment: None,
        }
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
        compile(
            circuit,
            self.settings.scope,
            self.shape(),
            &self.prompts.positions,
        )
    }

    /// Checks reference lengths before any forward pass (a bad dataset costs nothing); under
    /// `align by label`, that every slot (and, once plans with QK edges are known, every slot
    /// pair) of the evaluated prompts is in the reference set.
    pub fn check_reference(&self) -> miette::Result<()> {
        if self.settings.ablation == AblationKind::Zero {
            return Ok(());
        }
        if let Some(alignment) = &self.label_alignment {
            // By slot, not by index: lengths may differ, every slot must be covered.
            let with_pairs = !self.planned_needs.edge_heads.is_empty();
            alignment.check(self.settings.ablation, with_pairs)?;
            return Ok(());
        }
        let ref_lens: Vec<usize> = self.reference_ids.iter().map(Vec::len).collect();
        check_lengths(
            self.settings.ablation,
            &ref_lens,
            &self.prompt_lens(),
            &|b| self.prompts.positions[b].describe(),
        )?;
        Ok(())
    }

    /// Evaluates `circuits` (plus the full model and the empty circuit).
    pub fn evaluate(&mut self, circuits: &[&BoundCircuit]) -> miette::Result<Evaluation> {
        // Compile everything first: a position error in the last circuit costs no forward pass.
        let plans: Vec<Plan> = circuits
            .iter()
            .map(|c| self.compile(c))
            .collect::<miette::Result<_>>()?;
        let lens = self.prompt_lens();
        let empty_plan = Plan::empty(self.shape(), &lens, self.settings.scope);

        // The reference pass runs lazily (a run whose results are all cached needs none), but
        // once, covering every plan.
        for plan in &plans {
            self.planned_needs
                .edge_heads
                .extend(self.edge_term_heads(plan));
            self.planned_needs.head_outputs |= plan.has_path_edges();
        }
        self.check_reference()?;

        let full = self.run(&Plan::full(self.shape(), &lens, self.settings.scope))?;
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

    /// Builds the reference values if they are missing or do not cover `needs`.
    fn ensure_reference(&mut self, needs: &ReferenceNeeds) -> miette::Result<()> {
        if let Some((have, values)) = &self.reference {
            if values.covers(needs) {
                return Ok(());
            }
            let mut union = have.clone();
            union.edge_heads.extend(needs.edge_heads.iter().copied());
            union.head_outputs |= needs.head_outputs;
            let values = self.reference_values(&union)?;
            self.reference = Some((union, values));
            return Ok(());
        }
        let values = self.reference_values(needs)?;
        self.reference = Some((needs.clone(), values));
        Ok(())
    }

    /// The content key of the reference values for `needs`: sha256 of the model's weights,
    /// the reference prompts' token ids (which fix the dataset and the tokenizer), the ablation
    /// kind, the number of evaluated prompts (resample pairing) and what is needed.
    pub fn reference_cache_key(&self, needs: &ReferenceNeeds) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"circuit reference values v1\n");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        // The code that computes the numbers (build.rs): a changed engine never reads old results.
        hasher.update(env!("CIRCUIT_NUMERIC_CODE_FINGERPRINT").as_bytes());
        hasher.update(self.model.weights_hash().as_bytes());
        hasher.update(format!(
            "{:?} {}\n",
            self.settings.ablation,
            self.prompts.ids.len()
        ));
        for head in &needs.edge_heads {
            hasher.update(format!("edge {head}\n"));
        }
        hasher.update(format!("head_outputs {}\n", needs.head_outputs));
        if let Some(alignment) = &self.label_alignment {
            hasher.update(alignment.cache_text().as_bytes());
        }
        for prompt in &self.reference_ids {
            hasher.update((prompt.len() as u64).to_le_bytes());
            for id in prompt {
                hasher.update(id.to_le_bytes());
            }
        }
        hex::encode(hasher.finalize())
    }

    /// Reference values for `needs`: from the disk cache when present, else one forward pass.
    fn reference_values(&mut self, needs: &ReferenceNeeds) -> miette::Result<ReferenceValues> {
        let n_eval = self.prompts.ids.len();
        if self.settings.ablation == AblationKind::Zero {
            return Ok(ReferenceValues::zero(n_eval));
        }
        let cache_file = self.disk_cache.as_ref().map(|dir| {
            dir.join(format!(
                "reference-{}.safetensors",
                self.reference_cache_key(needs)
            ))
        });
        if let Some(path) = &cache_file {
            if let Some(values) = std::fs::read(path)
                .ok()
                .and_then(|bytes| ReferenceValues::from_safetensors(&bytes))
            {
                return Ok(values);
            }
        }
        let values = self.reference_forward(needs)?;
        if let Some(path) = &cache_file {
            // A cache is an optimization: failing to write it is not an error.
            let _ = std::fs::create_dir_all(path.parent().expect("a file in a folder"))
                .and_then(|_| crate::util::write_atomic(path, &values.to_safetensors()));
        }
        Ok(values)
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
        let options = ForwardOptions {
            all_logits: false,
            cache: true,
        };
        for chunk in self.reference_ids.chunks(self.batch_size.max(1)) {
            let out = self.model.forward(chunk, &options, &NoInterventions)?;
            let cache = out.cache.expect("the cache was asked for");
            let layers: Vec<LayerActivations> = cache
                .layers
                .iter()
                .map(|layer| LayerActivations {
                    z: layer.z.view(),
                    pattern: layer.pattern.view(),
                    v: layer.v_by_query_head.view(),
                    mlp_out: layer.mlp_out.view(),
                    head_out: layer.head_out.view(),
                })
                .collect();
            match &mut builder {
                AnyBuilder::Position(b) => b.add_batch(&layers),
                AnyBuilder::Label(b) => b.add_batch(&layers),
            }
            if let Some(f) = &self.on_batch {
                f(chunk.len());
            }
        }
        self.forward_passes += 1;
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
            let rows = out.logits.index_axis(Axis(1), 0).to_owned(); // (b, V)
            let all = logits.get_or_insert_with(|| Array2::zeros((n, rows.ncols())));
            all.slice_mut(s![start..end, ..]).assign(&rows);
            if let Some(f) = &self.on_batch {
                f(end - start);
            }
        }
        self.forward_passes += 1;
        Ok(logits.unwrap_or_else(|| Array2::zeros((0, 0))))
    }

    /// Per-prompt metrics of one plan; memoized by the plan's content.
    pub fn run(&mut self, plan: &Plan) -> miette::Result<PromptMetrics> {
        let key = plan.content_key();
        if let Some(hit) = self.memo.get(&key) {
            return Ok(hit.clone());
        }
        let cache_file = self
            .disk_cache
            .as_ref()
            .map(|dir| dir.join(format!("metrics-{}.json", self.results_cache_key(&key))));
        if let Some(hit) = cache_file.as_ref().and_then(|path| read_metrics(path)) {
            self.memo.insert(key, hit.clone());
            return Ok(hit);
        }
        if self.full_logits.is_none() {
            let full = self.end_logits(&|_| Box::new(NoInterventions))?;
            self.full_logits = Some(full);
        }
        let logits = if plan.is_identity() {
            self.full_logits.clone().expect("computed above")
        } else {
            let mut needs = self.planned_needs.clone();
            needs.edge_heads.extend(self.edge_term_heads(plan));
            needs.head_outputs |= plan.has_path_edges();
            self.ensure_reference(&needs)?;
            let reference = self.reference.take().expect("ensured above");
            let edge_ablation = self.settings.edge_ablation;
            let result = self.end_logits(&|prompts| {
                Box::new(PlanInterventions {
                    plan,
                    reference: &reference.1,
                    edge_ablation,
                    prompts,
                })
            });
            self.reference = Some(reference);
            result?
        };
        let metrics = per_prompt_metrics(
            logits.view(),
            self.full_logits.as_ref().expect("computed above").view(),
            &self.prompts.targets,
        );
        if let Some(path) = &cache_file {
            write_metrics(path, &metrics);
        }
        self.memo.insert(key, metrics.clone());
        Ok(metrics)
    }

    /// The content key of one plan's per-prompt metrics: the model's weights, the ablation
    /// settings, the evaluated prompts and their targets, the reference prompts and the plan.
    pub fn results_cache_key(&self, plan_key: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"circuit per-prompt metrics v1\n");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        // The code that computes the numbers (build.rs): a changed engine never reads old results.
        hasher.update(env!("CIRCUIT_NUMERIC_CODE_FINGERPRINT").as_bytes());
        hasher.update(self.model.weights_hash().as_bytes());
        hasher.update(format!(
            "{:?} {:?} {:?}\n",
            self.settings.ablation, self.settings.edge_ablation, self.settings.scope
        ));
        for (prompt, target) in self.prompts.ids.iter().zip(&self.prompts.targets) {
            hasher.update((prompt.len() as u64).to_le_bytes());
            prompt.iter().for_each(|id| hasher.update(id.to_le_bytes()));
            hasher.update(target.answer.to_le_bytes());
            hasher.update(target.distractor.to_le_bytes());
        }
        hasher.update(b"reference\n");
        for prompt in &self.reference_ids {
            hasher.update((prompt.len() as u64).to_le_bytes());
            prompt.iter().for_each(|id| hasher.update(id.to_le_bytes()));
        }
        if let Some(alignment) = &self.label_alignment {
            hasher.update(alignment.cache_text().as_bytes());
        }
        hasher.update(plan_key.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// The reference statistics of the alignment in force.
enum AnyBuilder {
    Position(ReferenceBuilder),
    Label(LabelReferenceBuilder),
}

/// Per-prompt metrics as JSON with every f64 stored as its bit pattern, so a cached run
/// reproduces a computed one bit for bit.
fn write_metrics(path: &std::path::Path, metrics: &PromptMetrics) {
    let bits: BTreeMap<&str, Vec<u64>> = metrics
        .iter()
        .map(|(&m, values)| {
            (
                super::metric_name(m),
                values.iter().map(|x| x.to_bits()).collect(),
            )
        })
        .collect();
    let text = serde_json::to_string(&bits).expect("metrics serialize");
    // A cache is an optimization: failing to write it is not an error.
    let _ = std::fs::create_dir_all(path.parent().expect("a file in a folder"))
        .and_then(|_| crate::util::write_atomic(path, text.as_bytes()));
}

/// Reads what [`write_metrics`] wrote; `None` for a missing or damaged entry.
fn read_metrics(path: &std::path::Path) -> Option<PromptMetrics> {
    let text = std::fs::read_to_string(path).ok()?;
    let bits: BTreeMap<String, Vec<u64>> = serde_json::from_str(&text).ok()?;
    let mut out = PromptMetrics::new();
    for metric in super::ALL_METRICS {
        let values = bits.get(super::metric_name(metric))?;
        out.insert(metric, values.iter().map(|&b| f64::from_bits(b)).collect());
    }
    Some(out)
}
