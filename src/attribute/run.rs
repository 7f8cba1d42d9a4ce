//! Scores for an opened `.circuit` file: what `circuit scores` computes.

use miette::Diagnostic;
use thiserror::Error;

use super::inputs::{reference_embeddings, slot_names};
use super::{
    scores, AttributeError, AttributionInputs, CircuitInPlace, Granularity, Method, ScoreSet,
};
use crate::ablate::{PlanInterventions, ReferenceNeeds};
use crate::data::slots::prompt_slots;
use crate::measure::file::Provenance;
use crate::measure::{mean, metric_name, Session, Targets};
use crate::model::backward::Kept;
use crate::resolve::bound::{BoundCircuit, EdgeAblation, HeadId, Metric, Scope};

/// What to score.
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub method: Method,
    pub granularity: Granularity,
}

/// Bad requests, caught before any forward pass.
#[derive(Debug, Error, Diagnostic)]
pub enum RequestError {
    #[error("circuit `{name}` has QK edges or path edges; scores relative to a circuit are implemented for node circuits (heads and MLPs at positions)")]
    #[diagnostic(
        code(circuit::attribute::circuit_gradients),
        help("the backward pass stops gradient flow at node-ablated entries only; score relative to a circuit without `edge` lines, or relative to the full model (no --circuit)")
    )]
    EdgesInCircuit { name: String },
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
/// of the same method (the graph export needs both). `on_pass` is called after each gradient
/// pass (`1` for eap, `steps` for eap-ig).
pub fn score_session(
    session: &mut Session,
    request: Request,
    circuit: Option<&BoundCircuit>,
    with_nodes: bool,
    on_pass: Option<&(dyn Fn() + Sync)>,
) -> miette::Result<ScoreReport> {
    let settings = session.settings().clone();
    // Checked before any forward pass.
    super::check_request(
        request.method,
        request.granularity,
        metric_name(settings.metric),
        circuit.is_some(),
    )?;
    let plan = match circuit {
        Some(c) => {
            let plan = session.compile(c)?;
            if plan.qk_queries.iter().any(|q| !q.is_empty()) || !plan.path_inputs.is_empty() {
                return Err(RequestError::EdgesInCircuit {
                    name: c.name.clone(),
                }
                .into());
            }
            Some(plan)
        }
        None => None,
    };
    if request.granularity == Granularity::QkEdges
        && settings.edge_ablation == EdgeAblation::Knockout
    {
        return Err(AttributeError::KnockoutEdges.into());
    }
    let (n_layers, n_heads) = (
        session.model().config.n_layers,
        session.model().config.n_heads,
    );
    let d_model = session.model().config.d_model;
    let mut needs = ReferenceNeeds::default();
    if request.granularity == Granularity::QkEdges && request.method.in_metric_units() {
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
        Method::EapIg { .. } => {
            let reference_ids: Vec<Vec<u32>> = session
                .reference_prompts()
                .iter()
                .map(|p| p.ids.clone())
                .collect();
            Some(reference_embeddings(
                session.model(),
                settings.ablation,
                &ids,
                &reference_ids,
                session.label_alignment(),
            )?)
        }
        _ => None,
    };
    let hooks = plan.as_ref().map(|plan| PlanInterventions {
        plan,
        reference: &reference,
        edge_ablation: settings.edge_ablation,
        prompts: 0..ids.len(),
    });
    let circuit_in_place = match (&plan, &hooks) {
        (Some(plan), Some(hooks)) => Some(CircuitInPlace {
            hooks,
            kept: Kept {
                z: &plan.head_keep,
                mlp_out: &plan.mlp_keep,
            },
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
        on_pass,
        circuit: circuit_in_place,
    };
    let set = scores(&inputs, request.method, request.granularity)?;
    let nodes_for_export = if with_nodes && request.granularity != Granularity::Nodes {
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
