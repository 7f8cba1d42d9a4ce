//! Exact scans: the exact effect on the metric (and on faithfulness) of ablating each candidate
//! alone, from the full model or from a circuit (`circuit scan`, `circuit scores --method
//! exact`, and the exact evaluations of `circuit discover`).
//!
//! A *candidate* is one component at one slot (the slot names of `circuit scores`: `END`,
//! `S4`, `S1+1`, `start+2`), ablated in every prompt that has the slot:
//! - a head at a query slot ([`ScanGranularity::Nodes`]): its `z` replaced by its reference
//!   value there;
//! - a QK edge `key slot → query slot` of a head ([`ScanGranularity::QkEdges`]): that one term
//!   `A[q,k]·v[k]` removed as `ablate edges by` says (edge mean, or knockout);
//! - an MLP at a slot ([`ScanGranularity::Mlps`]; also part of `Nodes` under `ablate heads and
//!   mlps`).
//!
//! Relative to a base circuit ([`ScanRequest::base`]) the candidates are the base's kept
//! components, each removed at the rows where the base keeps it. Each candidate's plan is the
//! base plan with that one more ablation ([`Scan::candidate_plan`]); it is exactly the plan
//! `circuit eval` compiles for the same circuit written out, so the naive engine gives `eval`'s
//! numbers bit for bit.
//!
//! Two engines compute the same numbers ([`Engine`]):
//! - [`Engine::Naive`]: one ablated forward per candidate, through [`Session::run`];
//! - [`Engine::Incremental`] (default): an edit at layer `l`, row `q` changes nothing before
//!   layer `l` and nothing in rows before `q`, so only rows `q..` of layers `l+1..` are
//!   recomputed ([`crate::model::resume`]), reading the base run's keys and values elsewhere,
//!   with many candidates' prompts stacked in one batch. Equal to the naive engine to f32
//!   rounding (the products run over other row sets), tested at 1e-6 of faithfulness. Base
//!   circuits with QK edges or path edges, and QK-edge candidates under knockout, run naive.
//!
//! Results are cached on disk ([`crate::measure::disk_cache`]'s key function, one metrics entry
//! per block of 64 candidates keyed by their plans' content and the engine), so an interrupted
//! scan resumes, losing at most the blocks it was computing.
//! `--shard i/N` computes every N-th candidate; [`merge`] joins the parts of one scan.

mod incremental;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ablate::{ReferenceNeeds, ReferenceValues};
use crate::attribute::inputs::slot_names;
use crate::attribute::run::ScoreReport;
use crate::attribute::{Component, Entry, Granularity, Method, ScoreSet};
use crate::data::slots::prompt_slots;
use crate::measure::disk_cache::{CacheInputs, CacheKeys, DiskCache, Entry as CacheEntry, Lookup};
use crate::measure::file::Provenance;
use crate::measure::{mean, metric_name, PromptMetrics, Session, ALL_METRICS};
use crate::plan::{Plan, QkQuery};
use crate::report::SettingsReport;
use crate::resolve::bound::{
    AblationKind, Alignment, BoundCircuit, EdgeAblation, HeadId, Metric, Scope, SettingName,
};

/// What a scan ablates, one candidate at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanGranularity {
    /// Every head at every query slot (and every MLP at every slot under `heads and mlps`).
    Nodes,
    /// Every QK edge `key slot → query slot` (key at or before query) of every head.
    QkEdges,
    /// Every MLP at every slot (needs `ablate heads and mlps`).
    Mlps,
}

impl ScanGranularity {
    pub fn name(self) -> &'static str {
        match self {
            ScanGranularity::Nodes => "nodes",
            ScanGranularity::QkEdges => "qk-edges",
            ScanGranularity::Mlps => "mlps",
        }
    }

    /// How score reports name it (MLPs are nodes there).
    fn score_granularity(self) -> Granularity {
        match self {
            ScanGranularity::QkEdges => Granularity::QkEdges,
            _ => Granularity::Nodes,
        }
    }
}

/// How candidates are computed; both give the same numbers (to f32 rounding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Recompute only what an ablation changes, many candidates per batch.
    Incremental,
    /// One ablated forward of every prompt per candidate ([`Session::run`]).
    Naive,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Incremental => "incremental",
            Engine::Naive => "naive",
        }
    }
}

/// Part `index` (1-based) of `count`: the candidates whose index `c` has `c % count ==
/// index - 1` (interleaved, so every part gets early and late layers alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole scan.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Parses `i/N` with `1 <= i <= N`.
    pub fn parse(text: &str) -> Result<Shard, ScanError> {
        let bad = || ScanError::BadShard {
            text: text.to_string(),
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    fn holds(self, candidate: usize) -> bool {
        candidate % self.count == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Bad scan requests and parts; each is refused before any forward pass (or any output).
#[derive(Debug, Error, Diagnostic)]
pub enum ScanError {
    #[error("`--shard {text}` is not a part of a scan")]
    #[diagnostic(
        code(circuit::scan::bad_shard),
        help("write --shard i/N with 1 <= i <= N, e.g. --shard 1/4 ... --shard 4/4 (a Slurm array's $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=1-N)")
    )]
    BadShard { text: String },
    #[error("--granularity mlps needs MLPs in scope, but this file ablates heads only")]
    #[diagnostic(
        code(circuit::scan::mlps_out_of_scope),
        help("write `ablate heads and mlps by mean` (or zero, resample) in the file, or scan --granularity nodes")
    )]
    MlpsOutOfScope,
    #[error("{path}: not a part of a `circuit scan --shard` ({why})")]
    #[diagnostic(
        code(circuit::scan::not_a_part),
        help(
            "--merge reads the JSON files that `circuit scan FILE --shard i/N -o PART.json` wrote"
        )
    )]
    NotAPart { path: String, why: String },
    #[error("{path} is a part of another scan than {first} (its scan key {theirs:.12}… differs from {ours:.12}…)")]
    #[diagnostic(
        code(circuit::scan::merge_mismatch),
        help("merge only the parts of one scan: the same file, model, dataset, settings, base circuit, granularity, engine and shard count")
    )]
    MergeMismatch {
        path: String,
        first: String,
        theirs: String,
        ours: String,
    },
    #[error("the parts do not make up the whole scan: {what}")]
    #[diagnostic(
        code(circuit::scan::merge_incomplete),
        help("pass every part 1/N … N/N exactly once")
    )]
    MergeIncomplete { what: String },
    #[error("--method exact scores heads, MLPs and QK edges; path edges are not scanned")]
    #[diagnostic(
        code(circuit::scan::path_edges),
        help("use --granularity nodes or qk-edges with --method exact, or a gradient method for path edges")
    )]
    PathEdges,
    #[error("circuit `{name}` is edge-complete: a scan removes one kept head, MLP or QK edge of its base, and an edge-complete circuit keeps edges only")]
    #[diagnostic(
        code(circuit::scan::edge_complete_base),
        help("scan relative to the full model (no --circuit), or a node-based circuit (`circuit NAME {{ ... }}`)")
    )]
    EdgeCompleteBase { name: String },
}

/// What to scan.
#[derive(Clone, Debug)]
pub struct ScanRequest {
    pub granularity: ScanGranularity,
    /// Remove one kept component of this circuit at a time instead of ablating components of
    /// the full model.
    pub base: Option<BoundCircuit>,
    pub shard: Shard,
    pub engine: Engine,
}

/// Options of a scan's run.
#[derive(Default)]
pub struct ScanOptions<'a> {
    /// Cache per-candidate results here (the CLI passes the disk cache folder).
    pub disk_cache: Option<DiskCache>,
    /// Called once with the number of prompt runs the scan will make (candidates × prompts,
    /// cached candidates included), then after each batch with the prompt runs it covered.
    pub on_total: Option<Box<dyn Fn(usize) + 'a>>,
    pub on_progress: Option<Box<dyn Fn(usize) + 'a>>,
    /// What the cache did (`--verbose`).
    pub on_note: Option<crate::measure::disk_cache::OnNote<'a>>,
}

/// One candidate: what is ablated, and where in each prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub component: Component,
    pub query: String,
    pub key: Option<String>,
    /// Per prompt that has it: (prompt, query token, key token of a QK edge).
    pub rows: Vec<(usize, usize, Option<usize>)>,
}

impl Candidate {
    fn layer(&self) -> usize {
        match self.component {
            Component::Head(h) => h.layer,
            Component::Mlp(l) => l,
            Component::Path { .. } => unreachable!("no path-edge candidates"),
        }
    }
}

/// One scanned candidate's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanEntry {
    /// Index among the whole scan's candidates (component order, as `circuit scores`).
    pub index: usize,
    pub layer: usize,
    /// `None`: the layer's MLP.
    pub head: Option<usize>,
    pub query: String,
    pub key: Option<String>,
    /// `m̄` of the file's metric with the candidate ablated.
    #[serde(with = "f64_bits")]
    pub metric: f64,
    /// Prompts that have the slot (pair).
    pub n_prompts: usize,
}

impl ScanEntry {
    fn component(&self) -> Component {
        match self.head {
            Some(head) => Component::Head(HeadId {
                layer: self.layer,
                head,
            }),
            None => Component::Mlp(self.layer),
        }
    }
}

/// The settings as a part file stores them (names as reports print them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredSettings {
    pub metric: String,
    pub ablation: String,
    pub edge_ablation: String,
    pub scope: String,
    pub reference: String,
    pub alignment: String,
}

/// A scan's results (of one shard, or merged), self-contained: a part file is this as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    /// The content key of the whole scan (equal for every shard of it): model, prompts,
    /// settings, base plan, granularity and engine.
    pub key: String,
    pub shard: Shard,
    /// Candidates in the whole scan.
    pub n_candidates: usize,
    pub granularity: ScanGranularity,
    pub engine: Engine,
    pub base: Option<String>,
    pub settings: StoredSettings,
    pub provenance: Provenance,
    /// `m̄(full)`, `m̄(empty)` and `m̄(base)` (= full without a base circuit) of the metric.
    #[serde(with = "f64_bits")]
    pub full: f64,
    #[serde(with = "f64_bits")]
    pub empty: f64,
    #[serde(with = "f64_bits")]
    pub base_metric: f64,
    pub slots: Vec<String>,
    pub n_prompts: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_model: usize,
    /// In candidate order.
    pub entries: Vec<ScanEntry>,
}

/// Part files store every number as its f64 bit pattern: JSON's decimal floats would not
/// always read back to the same bits, and a merged scan must equal the unsharded one exactly.
mod f64_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        u64::deserialize(deserializer).map(f64::from_bits)
    }
}

/// Candidates per disk cache entry: an interrupted scan loses at most this many (and the batch
/// they were in); few enough entries that the cache's bookkeeping stays cheap.
const CACHE_BLOCK: usize = 64;

/// The file tag of a part.
const PART_FORMAT: &str = "circuit scan part v1";

#[derive(Serialize, Deserialize)]
struct PartFile {
    format: String,
    #[serde(flatten)]
    result: ScanResult,
}

impl ScanResult {
    /// `m̄(candidate ablated) − m̄(base)` of each entry, in metric units.
    pub fn score(&self, entry: &ScanEntry) -> f64 {
        entry.metric - self.base_metric
    }

    /// Faithfulness of the base with the candidate ablated; `None` when full and empty agree.
    pub fn faithfulness(&self, entry: &ScanEntry) -> Option<f64> {
        let span = self.full - self.empty;
        (span != 0.0).then(|| (entry.metric - self.empty) / span)
    }

    /// As a `circuit scores` report (`--method exact`): the same table, JSON and heat map.
    pub fn score_report(&self) -> ScoreReport {
        let entries = self
            .entries
            .iter()
            .map(|e| Entry {
                component: e.component(),
                query: e.query.clone(),
                key: e.key.clone(),
                score: self.score(e),
                n_prompts: e.n_prompts,
            })
            .collect();
        ScoreReport {
            circuit: self.base.clone(),
            provenance: self.provenance.clone(),
            metric: metric_by_name(&self.settings.metric).unwrap_or(Metric::LogitDiff),
            full: self.full,
            empty: self.empty,
            set: ScoreSet {
                method: Method::Exact,
                granularity: self.granularity.score_granularity(),
                entries,
                slots: self.slots.clone(),
                n_prompts: self.n_prompts,
            },
            nodes_for_export: None,
            n_layers: self.n_layers,
            n_heads: self.n_heads,
            d_model: self.d_model,
        }
    }

    /// The settings as reports print them.
    pub fn settings_report(&self) -> SettingsReport {
        let s = &self.settings;
        let pick = |name: &str, names: &[&'static str]| -> &'static str {
            names.iter().copied().find(|n| *n == name).unwrap_or("?")
        };
        SettingsReport {
            metric: pick(&s.metric, &ALL_METRICS.map(metric_name)),
            ablation: pick(
                &s.ablation,
                &[
                    AblationKind::Mean,
                    AblationKind::Zero,
                    AblationKind::Resample,
                ]
                .map(|k| k.name()),
            ),
            edge_ablation: pick(
                &s.edge_ablation,
                &[EdgeAblation::EdgeMean, EdgeAblation::Knockout].map(|k| k.name()),
            ),
            scope: pick(
                &s.scope,
                &[Scope::Heads, Scope::HeadsAndMlps].map(|k| k.name()),
            ),
            reference: s.reference.clone(),
            alignment: pick(
                &s.alignment,
                &[Alignment::Position, Alignment::Label].map(|k| k.name()),
            ),
            aggregation: crate::report::AGGREGATION,
        }
    }

    /// The part file's JSON (`--shard`), deterministic.
    pub fn to_part_json(&self) -> String {
        let part = PartFile {
            format: PART_FORMAT.to_string(),
            result: self.clone(),
        };
        let mut text = serde_json::to_string_pretty(&part).expect("a scan serializes");
        text.push('\n');
        text
    }

    /// Reads a part file; `path` names it in errors.
    pub fn from_part_json(text: &str, path: &str) -> Result<ScanResult, ScanError> {
        let not_a_part = |why: String| ScanError::NotAPart {
            path: path.to_string(),
            why,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| not_a_part(format!("not JSON: {e}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(PART_FORMAT) {
            return Err(not_a_part(format!("no \"format\": \"{PART_FORMAT}\"")));
        }
        let part: PartFile =
            serde_json::from_value(value).map_err(|e| not_a_part(e.to_string()))?;
        Ok(part.result)
    }
}

fn metric_by_name(name: &str) -> Option<Metric> {
    ALL_METRICS.into_iter().find(|&m| metric_name(m) == name)
}

/// Joins the parts of one scan (in any order) into the result of the whole scan: the entries
/// of every shard `1..=N`, each exactly once, in candidate order. `paths` name the parts in
/// errors.
pub fn merge(parts: Vec<ScanResult>, paths: &[String]) -> Result<ScanResult, ScanError> {
    let Some(first) = parts.first() else {
        return Err(ScanError::MergeIncomplete {
            what: "no part given".to_string(),
        });
    };
    for (part, path) in parts.iter().zip(paths).skip(1) {
        if part.key != first.key || part.shard.count != first.shard.count {
            return Err(ScanError::MergeMismatch {
                path: path.clone(),
                first: paths[0].clone(),
                theirs: part.key.clone(),
                ours: first.key.clone(),
            });
        }
    }
    let count = first.shard.count;
    let mut seen = vec![None::<&str>; count];
    for (part, path) in parts.iter().zip(paths) {
        if part.shard.index == 0 || part.shard.index > count {
            return Err(ScanError::NotAPart {
                path: path.clone(),
                why: format!("its shard {} is not a part of {count}", part.shard),
            });
        }
        let slot = &mut seen[part.shard.index - 1];
        if let Some(other) = slot {
            return Err(ScanError::MergeIncomplete {
                what: format!("part {} is given twice ({other} and {path})", part.shard),
            });
        }
        *slot = Some(path);
    }
    let missing: Vec<String> = (1..=count)
        .filter(|&i| seen[i - 1].is_none())
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(ScanError::MergeIncomplete {
            what: format!("missing part(s) {}", missing.join(", ")),
        });
    }
    let mut merged = first.clone();
    merged.shard = Shard::WHOLE;
    merged.entries = parts.iter().flat_map(|p| p.entries.clone()).collect();
    merged.entries.sort_by_key(|e| e.index);
    let every_candidate_once = merged.entries.iter().enumerate().all(|(i, e)| e.index == i);
    if merged.entries.len() != merged.n_candidates || !every_candidate_once {
        return Err(ScanError::MergeIncomplete {
            what: format!(
                "{} entries for {} candidates",
                merged.entries.len(),
                merged.n_candidates
            ),
        });
    }
    Ok(merged)
}

/// An opened scan: the candidates, the base plan and the reference values, ready to run.
pub struct Scan {
    request: ScanRequest,
    metric: Metric,
    base_plan: Plan,
    candidates: Vec<Candidate>,
    slots: Vec<String>,
}

impl Scan {
    /// Lists the candidates of `request` on the session's prompts (no forward pass).
    pub fn new(session: &Session, request: ScanRequest) -> miette::Result<Scan> {
        let settings = session.settings();
        if request.granularity == ScanGranularity::Mlps && settings.scope != Scope::HeadsAndMlps {
            return Err(ScanError::MlpsOutOfScope.into());
        }
        if let Some(circuit) = request.base.as_ref().filter(|c| c.edge_complete) {
            return Err(ScanError::EdgeCompleteBase {
                name: circuit.name.clone(),
            }
            .into());
        }
        let base_plan = match &request.base {
            Some(circuit) => session.compile(circuit)?,
            None => session.full_plan(),
        };
        let slots: Vec<Vec<String>> = session
            .clean_prompts()
            .iter()
            .map(|p| slot_names(&prompt_slots(p).slots))
            .collect();
        let windows = &session.model().config.attention_windows;
        let candidates = candidates(&base_plan, &slots, windows, request.granularity);
        let mut order: Vec<String> = Vec::new();
        for prompt in &slots {
            for slot in prompt {
                if !order.contains(slot) {
                    order.push(slot.clone());
                }
            }
        }
        Ok(Scan {
            request,
            metric: settings.metric,
            base_plan,
            candidates,
            slots: order,
        })
    }

    /// Every candidate of the whole scan, in order.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The plan of the base with candidate `c` also ablated: what `circuit eval` compiles for
    /// that circuit written out.
    pub fn candidate_plan(&self, c: &Candidate) -> Plan {
        let mut plan = self.base_plan.clone();
        for &(b, q, k) in &c.rows {
            match (c.component, k) {
                (Component::Head(h), None) => {
                    plan.head_keep[h.layer][[b, q, h.head]] = false;
                    // An ablated node reads no edge.
                    plan.qk_queries[h.layer]
                        .retain(|x| !(x.prompt == b && x.query == q && x.head == h.head));
                }
                (Component::Head(h), Some(k)) => {
                    let queries = &mut plan.qk_queries[h.layer];
                    match queries
                        .iter_mut()
                        .find(|x| x.prompt == b && x.query == q && x.head == h.head)
                    {
                        Some(x) => x.keys.retain(|&kk| kk != k),
                        None => {
                            queries.push(QkQuery {
                                prompt: b,
                                query: q,
                                head: h.head,
                                keys: (0..=q).filter(|&kk| kk != k).collect(),
                            });
                            queries.sort_by_key(|x| (x.prompt, x.query, x.head));
                        }
                    }
                }
                (Component::Mlp(l), _) => plan.mlp_keep[l][[b, q]] = false,
                (Component::Path { .. }, _) => unreachable!("no path-edge candidates"),
            }
        }
        plan
    }

    /// The cache key of a block of candidates' results: their plans' content and the engine.
    fn block_key(&self, block: &[usize], engine: Engine) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for &c in block {
            hasher.update(self.candidate_plan(&self.candidates[c]).content_key());
        }
        // The incremental engine computes the file's metric only (the others are NaN), so the
        // metric is part of the key.
        format!(
            "scan block {} {} {}",
            engine.name(),
            metric_name(self.metric),
            hex::encode(hasher.finalize())
        )
    }

    /// Whether the incremental engine computes this scan (else it runs naive): the base plan
    /// has node and MLP ablations only, and QK-edge candidates are ablated by edge mean.
    pub fn incremental_supported(&self, session: &Session) -> bool {
        let plan = &self.base_plan;
        plan.qk_queries.iter().all(|q| q.is_empty())
            && plan.path_inputs.is_empty()
            && (self.request.granularity != ScanGranularity::QkEdges
                || session.settings().edge_ablation == EdgeAblation::EdgeMean)
    }

    /// The engine that runs: the one asked for, or naive where incremental does not apply.
    pub fn engine(&self, session: &Session) -> Engine {
        match self.request.engine {
            Engine::Incremental if self.incremental_supported(session) => Engine::Incremental,
            _ => Engine::Naive,
        }
    }

    /// Runs this shard of the scan.
    pub fn run(&self, session: &mut Session, options: &ScanOptions) -> miette::Result<ScanResult> {
        let metric = session.settings().metric;
        let engine = self.engine(session);
        let full = session.run(&session.full_plan())?;
        let empty = session.run(&session.empty_plan())?;
        let base = session.run(&self.base_plan)?;
        let keys = cache_keys(session);
        let key = keys.key(&CacheEntry::Metrics {
            plan_key: &format!(
                "scan {} {} {}",
                self.request.granularity.name(),
                engine.name(),
                self.base_plan.content_key()
            ),
        });
        let mine: Vec<usize> = (0..self.candidates.len())
            .filter(|&c| self.request.shard.holds(c))
            .collect();
        let n_prompts = session.clean_prompts().len();
        if let Some(f) = &options.on_total {
            f(mine.len() * n_prompts);
        }
        let note = |text: &str| {
            if let Some(f) = &options.on_note {
                f(text);
            }
        };
        // Cached blocks first; the rest are computed, and each block is cached as soon as its
        // last candidate is done.
        let mut results: BTreeMap<usize, PromptMetrics> = BTreeMap::new();
        let mut todo: Vec<usize> = Vec::new();
        let cache = match engine {
            Engine::Incremental => options.disk_cache.as_ref(),
            Engine::Naive => None, // the naive engine's runs are cached by the session, per plan
        };
        let blocks: Vec<&[usize]> = mine.chunks(CACHE_BLOCK).collect();
        let block_keys: Vec<String> = match cache {
            Some(_) => blocks.iter().map(|b| self.block_key(b, engine)).collect(),
            None => Vec::new(),
        };
        let mut block_of: BTreeMap<usize, usize> = BTreeMap::new();
        let mut left_in_block: Vec<usize> = Vec::new();
        for (j, block) in blocks.iter().enumerate() {
            let cached = cache.and_then(|cache| {
                match cache.read_metrics(&keys, &block_keys[j], n_prompts * block.len()) {
                    Lookup::Hit(m) => Some(m),
                    Lookup::Absent => None,
                    Lookup::Rejected(why) => {
                        note(&format!("recomputing: {why}"));
                        None
                    }
                }
            });
            match cached {
                Some(m) => {
                    for (i, &c) in block.iter().enumerate() {
                        let one: PromptMetrics = m
                            .iter()
                            .map(|(&metric, values)| {
                                (metric, values[i * n_prompts..(i + 1) * n_prompts].to_vec())
                            })
                            .collect();
                        results.insert(c, one);
                    }
                    if let Some(f) = &options.on_progress {
                        f(n_prompts * block.len());
                    }
                }
                None => {
                    todo.extend(block.iter().copied());
                    block.iter().for_each(|&c| {
                        block_of.insert(c, j);
                    });
                }
            }
            left_in_block.push(block.len());
        }
        if !results.is_empty() {
            note(&format!(
                "read {} scanned candidates from the cache",
                results.len()
            ));
        }
        let mut finished = |c: usize, m: PromptMetrics| {
            if let Some(f) = &options.on_progress {
                f(n_prompts);
            }
            results.insert(c, m);
            let Some(cache) = cache else {
                return;
            };
            let j = block_of[&c];
            left_in_block[j] -= 1;
            if left_in_block[j] == 0 {
                let mut block: PromptMetrics = BTreeMap::new();
                for c in blocks[j] {
                    for (&metric, values) in &results[c] {
                        block.entry(metric).or_default().extend(values);
                    }
                }
                for evicted in cache.write_metrics(&keys, &block_keys[j], &block) {
                    note(&evicted);
                }
            }
        };
        match engine {
            Engine::Naive => {
                for &c in &todo {
                    let m = session.run(&self.candidate_plan(&self.candidates[c]))?;
                    finished(c, m);
                }
            }
            Engine::Incremental => {
                let needs = ReferenceNeeds {
                    edge_heads: if self.request.granularity == ScanGranularity::QkEdges {
                        todo.iter()
                            .filter_map(|&c| match self.candidates[c].component {
                                Component::Head(h) => Some(h),
                                _ => None,
                            })
                            .collect()
                    } else {
                        Default::default()
                    },
                    head_outputs: false,
                    source_attention: false,
                };
                let reference: ReferenceValues = session.reference_values(&needs)?.clone();
                let picked: Vec<&Candidate> = todo.iter().map(|&c| &self.candidates[c]).collect();
                incremental::run(
                    session,
                    &self.base_plan,
                    &reference,
                    &base,
                    &picked,
                    &mut |i, m| finished(todo[i], m),
                )?;
            }
        }
        let (n_layers, n_heads, d_model) = {
            let c = &session.model().config;
            (c.n_layers, c.n_heads, c.d_model)
        };
        let settings = SettingsReport::new(session.settings(), session.provenance());
        let entries = mine
            .iter()
            .map(|&c| {
                let candidate = &self.candidates[c];
                let (layer, head) = match candidate.component {
                    Component::Head(h) => (h.layer, Some(h.head)),
                    Component::Mlp(l) => (l, None),
                    Component::Path { .. } => unreachable!("no path-edge candidates"),
                };
                ScanEntry {
                    index: c,
                    layer,
                    head,
                    query: candidate.query.clone(),
                    key: candidate.key.clone(),
                    metric: mean(&results[&c][&metric]),
                    n_prompts: candidate.rows.len(),
                }
            })
            .collect();
        Ok(ScanResult {
            key,
            shard: self.request.shard,
            n_candidates: self.candidates.len(),
            granularity: self.request.granularity,
            engine,
            base: self.request.base.as_ref().map(|c| c.name.clone()),
            settings: StoredSettings {
                metric: settings.metric.to_string(),
                ablation: settings.ablation.to_string(),
                edge_ablation: settings.edge_ablation.to_string(),
                scope: settings.scope.to_string(),
                reference: settings.reference.clone(),
                alignment: settings.alignment.to_string(),
            },
            provenance: session.provenance().clone(),
            full: mean(&full[&metric]),
            empty: mean(&empty[&metric]),
            base_metric: mean(&base[&metric]),
            slots: self.slots.clone(),
            n_prompts,
            n_layers,
            n_heads,
            d_model,
            entries,
        })
    }
}

/// Opens and runs a scan: what `circuit scan` computes.
pub fn scan(
    session: &mut Session,
    request: ScanRequest,
    options: &ScanOptions,
) -> miette::Result<ScanResult> {
    let scan = Scan::new(session, request)?;
    scan.run(session, options)
}

/// The disk cache's key function for the session's model, prompts and settings (the same
/// inputs the session's own entries are keyed by).
fn cache_keys(session: &Session) -> CacheKeys {
    let model = session.model();
    let clean = session.clean_prompts();
    let evaluated: Vec<Vec<u32>> = clean.iter().map(|p| p.ids.clone()).collect();
    let targets = session.targets().to_vec();
    let reference: Vec<Vec<u32>> = session
        .reference_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    CacheKeys::new(&CacheInputs {
        config: &model.config,
        weights_sha256: model.weights_hash(),
        tokenizer_sha256: model.tokenizer_hash(),
        settings: session.settings().into(),
        evaluated: &evaluated,
        targets: &targets,
        reference: &reference,
        label_alignment: session.label_alignment(),
    })
}

/// The candidates of a scan from `base` (a plan: the full model's keeps everything), in the
/// order `circuit scores` lists its entries: by component (heads by layer and head, then
/// MLPs), then query slot, then key slot, names compared as strings. A candidate is kept where
/// the base keeps it in at least one prompt; a QK edge only where the layer's window
/// (`attention_windows`) lets the query see the key.
fn candidates(
    base: &Plan,
    slots: &[Vec<String>],
    attention_windows: &[Option<usize>],
    granularity: ScanGranularity,
) -> Vec<Candidate> {
    type Key = (Component, String, Option<String>);
    let mut found: BTreeMap<Key, Vec<(usize, usize, Option<usize>)>> = BTreeMap::new();
    let shape = base.shape;
    let heads = matches!(
        granularity,
        ScanGranularity::Nodes | ScanGranularity::QkEdges
    );
    let mlps = match granularity {
        ScanGranularity::Mlps => true,
        ScanGranularity::Nodes => base.scope_includes_mlps,
        ScanGranularity::QkEdges => false,
    };
    for (b, prompt) in slots.iter().enumerate() {
        for (q, query) in prompt.iter().enumerate() {
            for layer in 0..shape.n_layers {
                let window = attention_windows.get(layer).copied().flatten();
                if heads {
                    for head in 0..shape.n_heads {
                        if !base.head_keep[layer][[b, q, head]] {
                            continue;
                        }
                        let id = HeadId { layer, head };
                        if granularity == ScanGranularity::Nodes {
                            found
                                .entry((Component::Head(id), query.clone(), None))
                                .or_default()
                                .push((b, q, None));
                            continue;
                        }
                        // The keys the base reads at this query (every key unless it lists some).
                        let listed = base.qk_queries[layer]
                            .iter()
                            .find(|x| x.prompt == b && x.query == q && x.head == head);
                        let visible = crate::model::visible_keys(window, q);
                        for (k, key) in prompt.iter().enumerate().take(q + 1) {
                            if !visible.contains(&k) || listed.is_some_and(|x| !x.keys.contains(&k))
                            {
                                continue;
                            }
                            found
                                .entry((Component::Head(id), query.clone(), Some(key.clone())))
                                .or_default()
                                .push((b, q, Some(k)));
                        }
                    }
                }
                if mlps && base.mlp_keep[layer][[b, q]] {
                    found
                        .entry((Component::Mlp(layer), query.clone(), None))
                        .or_default()
                        .push((b, q, None));
                }
            }
        }
    }
    found
        .into_iter()
        .map(|((component, query, key), rows)| Candidate {
            component,
            query,
            key,
            rows,
        })
        .collect()
}
