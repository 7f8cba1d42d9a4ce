//! One circuit as the EAP-IG / MIB graph JSON (`circuit export --format eap-ig-json`), written by
//! the format's one writer, [`crate::attribute::export::Graph`].
//!
//! The format keeps or leaves out whole nodes and edges, with no positions; a `.circuit`
//! circuit says more. Where the format can say it, the graph means exactly what the circuit
//! means under mean ablation (an edge left out reads its upstream's reference value, which is
//! what an ablated upstream passes on here):
//!
//! - **nodes**: `input` and `logits` are in the graph; a head is when the circuit keeps it at
//!   some position (a node statement or a QK edge); an MLP is when the circuit keeps it at some
//!   position, and always when the file ablates heads only (its MLPs then keep their values).
//!   In an edge-complete circuit every node is (none is ablated: each computes on what its
//!   edges bring).
//! - **edges** `U -> D` into a node in the graph: when some path edge of the circuit names `D`,
//!   the edges from upstream nodes those path edges keep (plus the embedding and MLPs outside
//!   the scope, which are always kept); otherwise `D` reads the ordinary stream, so every edge
//!   from a node in the graph (the embedding included). Edges into a node outside the graph are
//!   left out: that node's output is ablated whatever it reads.
//! - **edges of an edge-complete circuit** are exactly its path edges (those from `input` for
//!   its `embed` edges), plus, under `ablate heads`, every edge from an MLP (MLPs are then
//!   always kept); an input no edge enters has no other edge in the graph, as it reads
//!   reference values only. `circuit import` of the graph gives the circuit back.
//!
//! What the format cannot say is kept in two fields of ours after `edges`: `positions` (where
//! each node and path edge is kept, the QK edges) and `loss` (one sentence per thing a tool
//! reading only the format's fields would get differently).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::diff::positions_text;
use crate::attribute::export::{downstream_name, upstream_name, Graph, GraphConfig, GraphEntry};
use crate::data::positions::PositionSet;
use crate::model::{HeadInput, ModelConfig, ResidualTopology};
use crate::resolve::bound::{
    BoundCircuit, Downstream, HeadId, Scope, SettingName, Settings, Upstream,
};

/// A node of the graph other than `input` and `logits`, in the format's order.
fn upstreams(config: &ModelConfig) -> Vec<Upstream> {
    let mut out = Vec::new();
    for layer in 0..config.n_layers {
        out.extend((0..config.n_heads).map(|head| Upstream::Head(HeadId { layer, head })));
        out.push(Upstream::Mlp(layer));
    }
    out
}

/// Every input of a node, in the format's order: each head's q, k, v, each MLP, the logits.
fn downstreams(config: &ModelConfig) -> Vec<Downstream> {
    let mut out = Vec::new();
    for layer in 0..config.n_layers {
        for head in 0..config.n_heads {
            let h = HeadId { layer, head };
            out.extend([HeadInput::Q, HeadInput::K, HeadInput::V].map(|w| Downstream::Head(h, w)));
        }
        out.push(Downstream::Mlp(layer));
    }
    out.push(Downstream::Logits);
    out
}

/// The upstream node a downstream input belongs to (`None` for the logits).
fn node_of(d: Downstream) -> Option<Upstream> {
    match d {
        Downstream::Head(h, _) => Some(Upstream::Head(h)),
        Downstream::Mlp(l) => Some(Upstream::Mlp(l)),
        Downstream::Logits => None,
    }
}

/// Why a circuit has no graph of this format.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GraphExportError {
    #[error("the EAP-IG / MIB graph of a circuit is not defined on this model: it normalizes each attention and MLP output before adding it to the residual stream (Gemma 2's post-norms), so no head or MLP writes a term of a later input, and the graph's edges (`a0.h1->a2.h3<q>`) would state ablations this circuit does not make")]
    #[diagnostic(
        code(circuit::export::post_norm),
        help("node and QK-edge circuits are well defined here: share the .circuit file itself, or `circuit eval --format json` for its numbers (docs/semantics.md, \"Model families\")")
    )]
    PostNorm,
}

/// `circuit` of a file with `settings`, on a model of shape `config`, as the graph. Refused on
/// a post-norm model, where the graph's edges mean nothing (the one topology rule).
pub fn circuit_graph(
    circuit: &BoundCircuit,
    settings: &Settings,
    config: &ModelConfig,
) -> Result<Graph, GraphExportError> {
    let topology = config.residual;
    if topology == ResidualTopology::SequentialPostNorm {
        return Err(GraphExportError::PostNorm);
    }
    let mlps_in_scope = settings.scope == Scope::HeadsAndMlps;
    // Where each kept node is kept (a QK edge keeps its head at its queries). In an
    // edge-complete circuit no node is ablated: every head and MLP computes everywhere.
    let mut kept: BTreeMap<Upstream, String> = BTreeMap::new();
    if circuit.edge_complete {
        kept.extend(upstreams(config).into_iter().map(|u| (u, "*".to_string())));
    }
    for (h, set) in &circuit.heads {
        kept.insert(Upstream::Head(*h), positions_text(set));
    }
    for e in &circuit.qk_edges {
        kept.entry(Upstream::Head(e.head))
            .or_insert_with(|| e.queries.display_name());
    }
    for layer in 0..config.n_layers {
        let mlp = Upstream::Mlp(layer);
        match circuit.mlps.get(&layer) {
            Some(set) if mlps_in_scope => {
                kept.insert(mlp, positions_text(set));
            }
            _ if !mlps_in_scope => {
                kept.insert(mlp, "*".to_string());
            }
            _ => {}
        }
    }
    let in_graph = |u: Upstream| u == Upstream::Embed || kept.contains_key(&u);
    // Downstream inputs some path edge names, with the upstreams kept for them.
    let mut path_kept: BTreeMap<Downstream, Vec<Upstream>> = BTreeMap::new();
    for e in &circuit.path_edges {
        path_kept.entry(e.to).or_default().push(e.from);
    }
    // Whether `u`'s output reaches the input `d` (sections 5 and 8 of docs/semantics.md).
    // Always for MLPs outside the scope, and for the embedding in a node circuit (where it is
    // no source); else, where path edges name `d`, for their upstreams only (the embedding of
    // an edge-complete circuit only through an `embed` edge); an input no path edge names
    // reads the ordinary stream in a node circuit, and only reference values in an
    // edge-complete one.
    let passes = |u: Upstream, d: Downstream| {
        let always = match u {
            Upstream::Embed => !circuit.edge_complete,
            Upstream::Mlp(_) => !mlps_in_scope,
            Upstream::Head(_) => false,
        };
        always
            || match path_kept.get(&d) {
                None => !circuit.edge_complete,
                Some(from) => from.contains(&u),
            }
    };

    let unscored = |in_graph: bool| GraphEntry {
        score: None,
        in_graph,
    };
    let mut nodes = vec![("input".to_string(), unscored(true))];
    for u in upstreams(config) {
        nodes.push((upstream_name(u), unscored(in_graph(u))));
    }
    nodes.push(("logits".to_string(), unscored(true)));

    let mut edges = Vec::new();
    for d in downstreams(config) {
        let target_in_graph = node_of(d).is_none_or(in_graph);
        for u in std::iter::once(Upstream::Embed).chain(upstreams(config)) {
            if !d.reads(u, topology) {
                continue;
            }
            let entry = unscored(target_in_graph && in_graph(u) && passes(u, d));
            edges.push((
                format!("{}->{}", upstream_name(u), downstream_name(d)),
                entry,
            ));
        }
    }

    let mut extra = Map::new();
    extra.insert("circuit".into(), Value::String(circuit.name.clone()));
    let node_positions: Map<String, Value> = kept
        .iter()
        .map(|(u, at)| (upstream_name(*u), Value::String(at.clone())))
        .collect();
    let qk_edges: Vec<Value> = circuit
        .qk_edges
        .iter()
        .map(|e| Value::String(e.to_string()))
        .collect();
    let path_positions: Map<String, Value> = circuit
        .path_edges
        .iter()
        .map(|e| {
            (
                format!("{}->{}", upstream_name(e.from), downstream_name(e.to)),
                Value::String(positions_text(&e.positions)),
            )
        })
        .collect();
    extra.insert(
        "positions".into(),
        json!({"nodes": node_positions, "qk_edges": qk_edges, "edges": path_positions}),
    );
    extra.insert(
        "loss".into(),
        Value::Array(
            loss(circuit, settings, &kept)
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
    );
    Ok(Graph {
        cfg: GraphConfig::of(config),
        nodes,
        edges,
        extra,
    })
}

/// What a reader of the format's fields alone gets differently from the circuit.
fn loss(
    circuit: &BoundCircuit,
    settings: &Settings,
    kept: &BTreeMap<Upstream, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let partial: Vec<String> = kept
        .iter()
        .filter(|(_, at)| at.as_str() != "*")
        .map(|(u, at)| format!("{} at {at}", upstream_name(*u)))
        .collect();
    if !partial.is_empty() {
        out.push(format!(
            "positions: the graph keeps a node at every position; the circuit keeps {} only (see `positions.nodes`)",
            partial.join("; ")
        ));
    }
    if !circuit.qk_edges.is_empty() {
        out.push(format!(
            "QK edges have no form in the graph: their heads are in it with every key at every position ({})",
            circuit
                .qk_edges
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let positional: Vec<String> = circuit
        .path_edges
        .iter()
        .filter(|e| e.positions != PositionSet::All)
        .map(|e| {
            format!(
                "{}->{} at {}",
                upstream_name(e.from),
                downstream_name(e.to),
                positions_text(&e.positions)
            )
        })
        .collect();
    if !positional.is_empty() {
        out.push(format!(
            "path-edge positions: the graph keeps an edge at every position; the circuit keeps {} only",
            positional.join("; ")
        ));
    }
    out.push(format!(
        "ablation: the format does not say how what it leaves out is ablated; this file ablates {} by {} (edges by {}), and the graph means the circuit only when evaluated the same way",
        settings.scope.name(),
        settings.ablation.name(),
        settings.edge_ablation.name()
    ));
    out
}
