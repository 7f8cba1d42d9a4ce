//! Scores for an opened `.circuit` file: what `circuit scores` computes.

use ndarray::s;

use super::inputs::{reference_embeddings, slot_names};
use super::{
    scores, AttributeError, AttributionInputs, CircuitInPlace, Granularity, Method, ScoreSet,
};
use crate::ablate::{PlanInterventions, ReferenceNeeds};
use crate::data::slots::prompt_slots;
use crate::measure::file::Provenance;
use crate::measure::{mean, metric_name, Session, Targets};
use crate::model::backward::{Kept, KeptKeys, PathReader};
use crate::plan::Plan;
use crate::resolve::bound::{
    AblationKind, BoundCircuit, EdgeAblation, HeadId, Metric, Scope, Upstream,
};

/// What to score.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub method: Method,
    pub granularity: Granularity,
    /// Path edges also leave `embed` (the sources of an edge-complete circuit).
    pub embed_edges: bool,
}

/// The scores of one file, with what they are relative to.
#[derive(Clone, Debug)]
pub struct ScoreReport {
    /// `None`: the full model; else the circuit whose ablations were in place.
    pub circuit: Option<String>,
    pub provenance: Provenance,
    pub metric: Metric,
    /// `m̄(full)` and `m̄(empty)` of the file's metric: faithfulness units divide a score by
    /// their difference.
    pub full: f64,
    pub empty: f64,
    pub set: ScoreSet,
    /// Extra sets the export needs (node scores beside path edges for `eap-ig-json`).
    pub nodes_for_export: Option<ScoreSet>,
    pub n_layers: usize,
    pub n_heads: usize,
    pub d_model: usize,
}

impl ScoreReport {
    /// `score / (m̄(full) − m̄(empty))`; `None` when the score is not in metric units or full
    /// and empty agree.
    pub fn faithfulness_units(&self, score: f64) -> Option<f64> {
        let span = self.full - self.empty;
        (self.set.method.in_metric_units() && span != 0.0).then(|| score / span)
    }
}

/// Computes the scores of `request` on an opened file. `with_nodes` also computes node scores
/// of the same method (the graph export needs both). `on_pass(done, total)` is called after
/// each gradient pass (a forward and backward of a few prompts: one per few prompts for eap,
/// `steps` for eap-ig), `total` the passes of the whole request.
pub fn score_session(
    session: &mut Session,
    request: Request,
    circuit: Option<&BoundCircuit>,
    with_nodes: bool,
    on_pass: Option<&(dyn Fn(usize, usize) + Sync)>,
) -> miette::Result<ScoreReport> {
    let settings = session.settings().clone();
    // Checked before any forward pass.
    super::check_request(
        request.method,
        request.granularity,
        metric_name(settings.metric),
        circuit.is_some(),
    )?;
    if let Some(c) = circuit.filter(|c| c.edge_complete) {
        return Err(AttributeError::EdgeCompleteCircuit {
            name: c.name.clone(),
        }
        .into());
    }
    let plan = match circuit {
        Some(c) => Some(session.compile(c)?),
        None => None,
    };
    if request.granularity == Granularity::QkEdges
        && settings.edge_ablation == EdgeAblation::Knockout
    {
        return Err(AttributeError::KnockoutEdges.into());
    }
    // Post-norms (Gemma 2): no head's write is a term of a later input (the one topology rule).
    if session.model().config.residual == crate::model::ResidualTopology::SequentialPostNorm {
        if request.granularity == Granularity::PathEdges {
            return Err(AttributeError::PostNormPathEdges.into());
        }
        if request.method == Method::Dla {
            return Err(AttributeError::PostNormDla.into());
        }
    }
    let (n_layers, n_heads) = (
        session.model().config.n_layers,
        session.model().config.n_heads,
    );
    let d_model = session.model().config.d_model;
    // What the scores read, and what the circuit's own ablations read.
    let mut needs = ReferenceNeeds::default();
    if let Some(plan) = &plan {
        if settings.edge_ablation == EdgeAblation::EdgeMean {
            needs.edge_heads = plan.edge_heads();
        }
        needs.head_outputs = plan.has_path_edges();
    }
    // The reference embedding is stored with the head outputs.
    needs.head_outputs |= request.embed_edges && request.granularity == Granularity::PathEdges;
    let qk_edge_terms =
        request.granularity == Granularity::QkEdges && request.method.in_metric_units();
    // Under resample at position alignment each term's reference value is the paired prompt's
    // `A_r[q,k]·v_r[k]`, computed while scoring from the reference pass's own pattern and values
    // (`ReferenceNeeds::source_attention`) instead of stored for every head.
    let paired = settings.ablation == AblationKind::Resample && session.label_alignment().is_none();
    let reference_ids: Vec<Vec<u32>> = session
        .reference_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    needs.source_attention = qk_edge_terms && paired;
    if qk_edge_terms && !paired {
        needs.edge_heads = (0..n_layers)
            .flat_map(|layer| (0..n_heads).map(move |head| HeadId { layer, head }))
            .collect();
    }
    let reference = session.reference_values(&needs)?.clone();
    let evaluation = session.evaluate(&[])?;
    let full = mean(&evaluation.full[&settings.metric]);
    let empty = mean(&evaluation.empty[&settings.metric]);

    let clean = session.clean_prompts();
    let ids: Vec<Vec<u32>> = clean.iter().map(|p| p.ids.clone()).collect();
    let targets: Vec<Targets> = session.targets().to_vec();
    let slots: Vec<Vec<String>> = clean
        .iter()
        .map(|p| slot_names(&prompt_slots(p).slots))
        .collect();
    let x_ref = match request.method {
        Method::EapIg { .. } => Some(reference_embeddings(
            session.model(),
            settings.ablation,
            &ids,
            &reference_ids,
            session.label_alignment(),
        )?),
        _ => None,
    };
    let hooks = plan.as_ref().map(|plan| PlanInterventions {
        plan,
        reference: &reference,
        edge_ablation: settings.edge_ablation,
        prompts: 0..ids.len(),
    });
    let masks = plan
        .as_ref()
        .map(|plan| CircuitMasks::of(plan, settings.edge_ablation));
    let circuit_in_place = match (&plan, &hooks, &masks) {
        (Some(plan), Some(hooks), Some(masks)) => Some(CircuitInPlace {
            hooks,
            kept: masks.kept(plan),
        }),
        _ => None,
    };
    let inputs = AttributionInputs {
        model: session.model(),
        ids: &ids,
        targets: &targets,
        slots: &slots,
        metric: metric_name(settings.metric),
        reference: &reference,
        reference_embeddings: x_ref.as_ref().map(|x| x.view()),
        mlps_in_scope: settings.scope == Scope::HeadsAndMlps,
        embed_edges: request.embed_edges,
        on_pass: None,
        prompts_per_pass: None,
        circuit: circuit_in_place,
    };
    let nodes_too = with_nodes && request.granularity != Granularity::Nodes;
    let total = super::gradient_passes(&inputs, request.method, request.granularity)
        + if nodes_too {
            super::gradient_passes(&inputs, request.method, Granularity::Nodes)
        } else {
            0
        };
    let done = std::sync::atomic::AtomicUsize::new(0);
    let count = || {
        let done = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Some(f) = on_pass {
            f(done, total);
        }
    };
    if let Some(f) = on_pass {
        f(0, total);
    }
    let inputs = AttributionInputs {
        on_pass: on_pass.map(|_| &count as &(dyn Fn() + Sync)),
        ..inputs
    };
    let set = scores(&inputs, request.method, request.granularity)?;
    let nodes_for_export = if nodes_too {
        Some(scores(&inputs, request.method, Granularity::Nodes)?)
    } else {
        None
    };
    Ok(ScoreReport {
        circuit: circuit.map(|c| c.name.clone()),
        provenance: session.provenance().clone(),
        metric: settings.metric,
        full,
        empty,
        set,
        nodes_for_export,
        n_layers,
        n_heads,
        d_model,
    })
}

/// What a plan's hooks hold constant besides node-ablated outputs, in the backward's terms.
pub struct CircuitMasks {
    /// Per layer: the QK-edge terms computed where only some are (edge mean; none under
    /// knockout, which edits the scores the backward already differentiates).
    pub qk_terms: Vec<Vec<KeptKeys>>,
    /// Every input the plan rebuilds from chosen upstream components.
    pub paths: Vec<PathReader>,
}

impl CircuitMasks {
    pub fn of(plan: &Plan, edge_ablation: EdgeAblation) -> CircuitMasks {
        let qk_terms = match edge_ablation {
            EdgeAblation::EdgeMean => plan
                .qk_queries
                .iter()
                .map(|layer| {
                    layer
                        .iter()
                        .map(|q| KeptKeys {
                            prompt: q.prompt,
                            query: q.query,
                            head: q.head,
                            keys: q.keys.clone(),
                        })
                        .collect()
                })
                .collect(),
            EdgeAblation::Knockout => Vec::new(),
        };
        let shape = plan.shape;
        let paths = plan
            .path_inputs
            .iter()
            .map(|(&downstream, mask)| {
                let mut reaches = mask.clone(); // (B, T, U)
                if !plan.scope_includes_mlps {
                    // MLPs outside the ablation always reach (the hooks never swap them).
                    for layer in 0..shape.n_layers {
                        let u = shape.upstream_index(Upstream::Mlp(layer));
                        reaches.slice_mut(s![.., .., u]).fill(true);
                    }
                }
                PathReader {
                    reader: super::reader_of(downstream),
                    reaches,
                }
            })
            .collect();
        CircuitMasks { qk_terms, paths }
    }

    /// Everything `plan`'s hooks hold constant, for the backward.
    pub fn kept<'a>(&'a self, plan: &'a Plan) -> Kept<'a> {
        Kept {
            z: &plan.head_keep,
            mlp_out: &plan.mlp_keep,
            qk_terms: &self.qk_terms,
            paths: &self.paths,
        }
    }
}
