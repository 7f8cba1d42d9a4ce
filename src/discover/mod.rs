//! Discovery: from a `.circuit` file's settings to a circuit that reaches a target
//! faithfulness, found by exact evaluations (`circuit discover`; docs/semantics.md,
//! "Discovery").
//!
//! 1. Candidates ([`candidates`]): every head × query slot and, under `ablate heads and mlps`,
//!    every MLP × slot (`nodes`); or every QK edge key slot → query slot of every head, with
//!    the MLPs as nodes (`qk-edges`), optionally only edges whose mean attention reaches a
//!    threshold (the research note's filter); with a base circuit, only what it keeps.
//! 2. Rank them by an attribution score (`attribute`), relative to the full model, by |score|.
//! 3. The faithfulness-against-size curve and the smallest top-k prefix reaching the target, by
//!    exact evaluations and bisection ([`search`]).
//! 4. Pruning, ACDC-style, from the output backwards: drop each kept component whose removal
//!    keeps faithfulness at or above the target; then each survivor's exact cost of removal.
//!
//! Every faithfulness here is an exact evaluation of a compiled circuit by the [`Session`]
//! (memoized by plan): the search never trusts a score for a number it reports.

pub mod candidates;
pub mod chart;
pub mod error;
pub mod invocation;
pub mod output;
pub mod report;
pub mod search;

use std::collections::{BTreeMap, BTreeSet};

use crate::attribute::run::{score_session, Request as ScoreRequest};
use crate::attribute::ScoreSet;
use crate::attribute::{Component, Granularity, Method};
use crate::measure::disk_cache::DiskCache;
use crate::measure::{mean, metric_name, scores as normalize, Session};
use crate::resolve::bound::{BoundCircuit, Metric, Scope};
use crate::scan::{Engine, ScanGranularity, ScanOptions, ScanRequest, Shard};

use candidates::{circuit_of, inside, Candidate, SlotPositions};
pub use error::DiscoverError;
use search::{Curve, Evaluations, PrefixResult};

/// What to discover.
#[derive(Clone, Debug)]
pub struct Request {
    /// The faithfulness to reach, in (0, 1.5].
    pub target: f64,
    /// The score candidates are ranked by.
    pub rank: Method,
    /// `Nodes` or `QkEdges`.
    pub granularity: Granularity,
    /// Keep as QK-edge candidates only pairs whose mean attention is at least this.
    pub attention_threshold: Option<f64>,
    /// Search only inside this circuit (what it keeps).
    pub base: Option<BoundCircuit>,
    /// When the target is out of reach, return the best circuit found instead of an error.
    pub best_effort: bool,
    /// Where `--rank exact`'s scan caches per-candidate results (so an interrupted discovery
    /// resumes); `None`: not cached.
    pub scan_cache: Option<DiskCache>,
}

/// Requests that can be refused before anything is loaded.
pub fn check_request(request: &Request) -> Result<(), DiscoverError> {
    if let Some(base) = request
        .base
        .as_ref()
        .filter(|b| !b.path_edges.is_empty() || b.edge_complete)
    {
        return Err(DiscoverError::BasePathEdges {
            name: base.name.clone(),
        });
    }
    let t = request.target;
    if !(t > 0.0 && t <= 1.5) {
        return Err(DiscoverError::TargetRange { target: t });
    }
    if let Some(threshold) = request.attention_threshold {
        if request.granularity != Granularity::QkEdges {
            return Err(DiscoverError::ThresholdNeedsQkEdges {
                granularity: request.granularity.name(),
            });
        }
        if !(0.0..=1.0).contains(&threshold) {
            return Err(DiscoverError::ThresholdRange { threshold });
        }
    }
    Ok(())
}

/// What a discovery found, and how.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub target: f64,
    pub rank: Method,
    pub granularity: Granularity,
    pub attention_threshold: Option<f64>,
    pub base: Option<String>,
    pub metric: Metric,
    /// `m̄(full)` and `m̄(empty)` of the file's metric.
    pub full: f64,
    pub empty: f64,
    /// Every candidate searched.
    pub candidates: Vec<Candidate>,
    /// Scored candidates by decreasing |score| (ties in candidate order).
    pub ranked: Vec<usize>,
    /// Candidates the rank gives no score, kept in every prefix.
    pub always: Vec<usize>,
    pub excluded: Excluded,
    pub positions: SlotPositions,
    pub curve: Curve,
    /// The smallest prefix reaching the target, `None` when none does.
    pub prefix_k: Option<usize>,
    /// The faithfulness of that prefix (or of the best prefix evaluated).
    pub prefix_faithfulness: f64,
    /// The candidates the found circuit keeps.
    pub found: BTreeSet<usize>,
    pub faithfulness: f64,
    /// Whether `faithfulness >= target` (false only under `best_effort`).
    pub reached: bool,
    /// Per kept candidate: `f(found) − f(found without it)`.
    pub costs: BTreeMap<usize, f64>,
    /// Distinct circuits evaluated exactly.
    pub evaluations: usize,
    /// Under `--rank exact`: the single ablations the scan computed to rank the candidates
    /// (not counted in `evaluations`).
    pub single_ablations: Option<usize>,
    /// The found circuit, named [`output::FOUND`].
    pub circuit: BoundCircuit,
}

/// What was left out of the search, and why.
#[derive(Clone, Debug, Default)]
pub struct Excluded {
    /// QK edges under the attention threshold.
    pub below_threshold: usize,
    /// Candidates the base circuit does not keep.
    pub outside_base: usize,
    /// Candidates at slots that cannot be written as positions.
    pub unwritable: usize,
}

/// Runs a discovery on an opened file. `on_evaluation` is called after each exact evaluation
/// with the count so far.
pub fn discover(
    session: &mut Session,
    request: &Request,
    on_evaluation: Option<&dyn Fn(usize)>,
) -> miette::Result<Discovery> {
    check_request(request)?;
    let settings = session.settings().clone();
    let metric = settings.metric;
    let full = mean(&session.run(&session.full_plan())?[&metric]);
    let empty = mean(&session.run(&session.empty_plan())?[&metric]);
    if full == empty {
        return Err(DiscoverError::UndefinedFaithfulness {
            metric: metric_name(metric),
            value: full,
        }
        .into());
    }

    let ranked_set = rank_scores(session, request, request.granularity, false)?;
    let mut single_ablations = ranked_set.entries.len();
    let positions = SlotPositions::new(&ranked_set.slots, session.clean_prompts());
    let mut excluded = Excluded::default();
    let mut all: Vec<Candidate> = ranked_set.entries.iter().map(Candidate::scored).collect();
    if request.granularity == Granularity::QkEdges && settings.scope == Scope::HeadsAndMlps {
        // MLPs are nodes at either granularity: scored by the rank's node form where it has one.
        if request.rank.in_metric_units() {
            let nodes = rank_scores(session, request, Granularity::Nodes, true)?;
            single_ablations += nodes.entries.len();
            all.extend(
                nodes
                    .entries
                    .iter()
                    .filter(|e| matches!(e.component, Component::Mlp(_)))
                    .map(Candidate::scored),
            );
        } else {
            let n_layers = session.model().config.n_layers;
            for layer in 0..n_layers {
                for slot in &ranked_set.slots {
                    all.push(Candidate {
                        component: Component::Mlp(layer),
                        query: slot.clone(),
                        key: None,
                        score: None,
                    });
                }
            }
        }
    }
    if let Some(threshold) = request.attention_threshold {
        let attention = score_session(
            session,
            ScoreRequest {
                method: Method::Attention,
                granularity: Granularity::QkEdges,
            },
            None,
            false,
            None,
        )?
        .set;
        let weight: BTreeMap<(Component, &str, Option<&str>), f64> = attention
            .entries
            .iter()
            .map(|e| ((e.component, e.query.as_str(), e.key.as_deref()), e.score))
            .collect();
        let before = all.len();
        all.retain(|c| {
            c.key.is_none()
                || weight
                    .get(&(c.component, c.query.as_str(), c.key.as_deref()))
                    .is_some_and(|&a| a >= threshold)
        });
        excluded.below_threshold = before - all.len();
    }
    let before = all.len();
    all.retain(|c| {
        positions.writable(&c.query) && c.key.as_deref().is_none_or(|k| positions.writable(k))
    });
    excluded.unwritable = before - all.len();
    if let Some(base) = &request.base {
        let plan = session.compile(base)?;
        let slots = candidates::token_slots(session.clean_prompts());
        let before = all.len();
        all.retain(|c| inside(c, &plan, &slots));
        excluded.outside_base = before - all.len();
    }
    if all.is_empty() {
        let why = match (&request.base, excluded.below_threshold) {
            (Some(b), _) if excluded.outside_base > 0 => {
                format!("circuit `{}` keeps none of the candidates", b.name)
            }
            (_, n) if n > 0 => format!("all {n} QK edges are below the attention threshold"),
            _ => "the model and dataset give no component to search".to_string(),
        };
        return Err(DiscoverError::NoCandidates { why }.into());
    }

    let mut ranked: Vec<usize> = (0..all.len()).filter(|&i| all[i].score.is_some()).collect();
    ranked.sort_by(|&a, &b| {
        let (x, y) = (all[a].score.unwrap_or(0.0), all[b].score.unwrap_or(0.0));
        y.abs().total_cmp(&x.abs()).then(a.cmp(&b))
    });
    let always: Vec<usize> = (0..all.len()).filter(|&i| all[i].score.is_none()).collect();

    let candidates = all;
    let full_metrics = session.run(&session.full_plan())?[&metric].clone();
    let empty_metrics = session.run(&session.empty_plan())?[&metric].clone();
    let (found, faithfulness, reached, prefix_k, prefix_faithfulness, curve, costs, evaluations) = {
        let session = &mut *session;
        let candidates = &candidates;
        let positions = &positions;
        let mut evaluated = 0;
        let mut evals = Evaluations::new(move |kept: &BTreeSet<usize>| -> miette::Result<f64> {
            evaluated += 1;
            if let Some(cb) = on_evaluation {
                cb(evaluated);
            }
            let circuit = circuit_of(output::FOUND, candidates, kept, positions);
            let plan = session.compile(&circuit)?;
            let metrics = session.run(&plan)?;
            let f = normalize(&full_metrics, &metrics[&metric], &empty_metrics)
                .faithfulness
                .ok_or(DiscoverError::UndefinedFaithfulness {
                    metric: metric_name(metric),
                    value: full,
                })?;
            Ok(f)
        });
        let curve = search::curve(&mut evals, &always, &ranked)?;
        let result = search::smallest_prefix(&mut evals, &always, &ranked, request.target, &curve)?;
        let (start, target, prefix_k, prefix_f, reached) = match result {
            PrefixResult::Reached { k, faithfulness } => (
                search::prefix(&always, &ranked, k),
                request.target,
                Some(k),
                faithfulness,
                true,
            ),
            PrefixResult::Unreachable { all, best_k, best } => {
                if !request.best_effort {
                    return Err(DiscoverError::Unreachable {
                        target: request.target,
                        n: candidates.len(),
                        all,
                        best,
                        best_k,
                    }
                    .into());
                }
                (
                    search::prefix(&always, &ranked, best_k),
                    best,
                    None,
                    best,
                    false,
                )
            }
        };
        let order = backwards(candidates, positions, &start);
        let (found, f) = search::prune(&mut evals, start, &order, target)?;
        let costs = search::removal_costs(&mut evals, &found)?;
        let evaluations = evals.count();
        (
            found,
            f,
            reached,
            prefix_k,
            prefix_f,
            curve,
            costs,
            evaluations,
        )
    };
    let circuit = circuit_of(output::FOUND, &candidates, &found, &positions);
    Ok(Discovery {
        target: request.target,
        rank: request.rank,
        granularity: request.granularity,
        attention_threshold: request.attention_threshold,
        base: request.base.as_ref().map(|b| b.name.clone()),
        metric,
        full,
        empty,
        candidates,
        ranked,
        always,
        excluded,
        positions,
        curve,
        prefix_k,
        prefix_faithfulness,
        found,
        faithfulness,
        reached,
        costs,
        evaluations,
        single_ablations: (request.rank == Method::Exact).then_some(single_ablations),
        circuit,
    })
}

/// The scores candidates are ranked by, relative to the full model: an attribution method, or
/// (`exact`) the exact single-ablation scan. `mlps_only`: only the MLPs' node scores are read.
fn rank_scores(
    session: &mut Session,
    request: &Request,
    granularity: Granularity,
    mlps_only: bool,
) -> miette::Result<ScoreSet> {
    if request.rank != Method::Exact {
        let request = ScoreRequest {
            method: request.rank,
            granularity,
        };
        return Ok(score_session(session, request, None, false, None)?.set);
    }
    let granularity = match (granularity, mlps_only) {
        (_, true) => ScanGranularity::Mlps,
        (Granularity::QkEdges, false) => ScanGranularity::QkEdges,
        _ => ScanGranularity::Nodes,
    };
    let scan = ScanRequest {
        granularity,
        base: None,
        shard: Shard::WHOLE,
        engine: Engine::Incremental,
    };
    let options = ScanOptions {
        disk_cache: request.scan_cache.clone(),
        ..Default::default()
    };
    Ok(crate::scan::scan(session, scan, &options)?
        .score_report()
        .set)
}

/// The pruning order, from the output backwards: later layers first (a layer's MLP before its
/// heads, since it reads them), later query positions first, then later keys, then higher
/// head indices.
fn backwards(
    candidates: &[Candidate],
    positions: &SlotPositions,
    kept: &BTreeSet<usize>,
) -> Vec<usize> {
    let mut order: Vec<usize> = kept.iter().copied().collect();
    order.sort_by_key(|&i| {
        let c = &candidates[i];
        let (is_mlp, head) = match c.component {
            Component::Mlp(_) => (1, 0),
            Component::Head(h) => (0, h.head),
            Component::Path { .. } => (0, 0),
        };
        std::cmp::Reverse((
            c.layer(),
            is_mlp,
            positions.rank(&c.query),
            c.key.as_deref().map(|k| positions.rank(k)),
            head,
            i,
        ))
    });
    order
}
