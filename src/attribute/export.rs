//! `--format eap-ig-json`: the graph JSON of the EAP-IG library and the MIB benchmark.
//!
//! `cfg` (n_layers, n_heads, parallel_attn_mlp, d_model), `nodes` named `input`, `a{L}.h{H}`,
//! `m{L}`, `logits` with `score` and `in_graph`, and `edges` named `a0.h1->a2.h3<q>`,
//! `a0.h1->m2`, `m0->logits` with `score` and `in_graph`. That format has no positions, so
//! each score is summed over slots (the additive scores' sum estimates ablating the component
//! at every position); the positional scores stay in our own JSON. Edges out of `input` are
//! absent: the embedding is no component of a `.circuit` file (it is always kept).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::{Component, ScoreSet};
use crate::model::{HeadInput, ModelConfig, ResidualTopology};
use crate::resolve::bound::{Downstream, Upstream};

/// The format's name of an upstream node: `input`, `a0.h1`, `m2`.
pub fn upstream_name(u: Upstream) -> String {
    match u {
        Upstream::Head(h) => format!("a{}.h{}", h.layer, h.head),
        Upstream::Mlp(l) => format!("m{l}"),
        Upstream::Embed => "input".to_string(),
    }
}

/// The format's name of a downstream input: `a2.h3<q>`, `m2`, `logits`.
pub fn downstream_name(d: Downstream) -> String {
    match d {
        Downstream::Head(h, which) => {
            let which = match which {
                HeadInput::Q => "q",
                HeadInput::K => "k",
                HeadInput::V => "v",
            };
            format!("a{}.h{}<{which}>", h.layer, h.head)
        }
        Downstream::Mlp(l) => format!("m{l}"),
        Downstream::Logits => "logits".to_string(),
    }
}

/// The format's `cfg`: the model's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphConfig {
    pub n_layers: usize,
    pub n_heads: usize,
    pub parallel_attn_mlp: bool,
    pub d_model: usize,
}

impl GraphConfig {
    /// The `cfg` of a model: its shape, and `parallel_attn_mlp` when attention and MLP of a
    /// layer read the same stream (GPT-NeoX's `use_parallel_residual`), so that no edge joins
    /// a layer's heads to its own MLP.
    pub fn of(config: &ModelConfig) -> GraphConfig {
        GraphConfig {
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            parallel_attn_mlp: config.residual == ResidualTopology::Parallel,
            d_model: config.d_model,
        }
    }
}

/// A node's or an edge's entry: its score (`null` when there is none, as for `input`) and
/// whether it is in the graph.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraphEntry {
    pub score: Option<f64>,
    pub in_graph: bool,
}

/// The EAP-IG / MIB graph as data: the one writer of the format, for scores
/// ([`eap_ig_json`]) and for circuits (`report::graph_json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub cfg: GraphConfig,
    /// By name, in the order written.
    pub nodes: Vec<(String, GraphEntry)>,
    pub edges: Vec<(String, GraphEntry)>,
    /// Fields of ours after the format's (positions, what the format could not say); absent
    /// when empty.
    pub extra: Map<String, Value>,
}

impl Graph {
    /// The JSON text: `cfg`, `nodes`, `edges`, then the extra fields; pretty, ending in a
    /// newline.
    pub fn to_json(&self) -> String {
        let entries = |list: &[(String, GraphEntry)]| {
            let mut map = Map::new();
            for (name, e) in list {
                map.insert(
                    name.clone(),
                    json!({"score": e.score, "in_graph": e.in_graph}),
                );
            }
            Value::Object(map)
        };
        let mut value = Map::new();
        value.insert(
            "cfg".into(),
            json!({
                "n_layers": self.cfg.n_layers,
                "n_heads": self.cfg.n_heads,
                "parallel_attn_mlp": self.cfg.parallel_attn_mlp,
                "d_model": self.cfg.d_model,
            }),
        );
        value.insert("nodes".into(), entries(&self.nodes));
        value.insert("edges".into(), entries(&self.edges));
        for (k, v) in &self.extra {
            value.insert(k.clone(), v.clone());
        }
        let mut text =
            serde_json::to_string_pretty(&Value::Object(value)).expect("graph serializes");
        text.push('\n');
        text
    }
}

/// Position-summed scores of one set, by name, in component order.
fn summed(set: &ScoreSet) -> BTreeMap<Component, f64> {
    let mut out = BTreeMap::new();
    for e in &set.entries {
        *out.entry(e.component).or_insert(0.0) += e.score;
    }
    out
}

/// The names among `scores` whose |score| is in the top `top` (all when `None`).
fn in_graph(scores: &BTreeMap<Component, f64>, top: Option<usize>) -> BTreeSet<Component> {
    let mut order: Vec<(&Component, f64)> = scores.iter().map(|(c, &s)| (c, s)).collect();
    order.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(b.0)));
    order
        .into_iter()
        .take(top.unwrap_or(usize::MAX))
        .map(|(c, _)| *c)
        .collect()
}

/// The graph JSON from node scores and path-edge scores of one method. `in_graph` marks the
/// `top` edges (and nodes) by |score|, every one when `None`; `input` and `logits` are always
/// in the graph and carry no score. `cfg` is the scored model's ([`GraphConfig::of`]).
pub fn eap_ig_json(
    nodes: &ScoreSet,
    edges: &ScoreSet,
    cfg: GraphConfig,
    top: Option<usize>,
) -> String {
    let node_scores = summed(nodes);
    let edge_scores = summed(edges);
    let kept_nodes = in_graph(&node_scores, top);
    let kept_edges = in_graph(&edge_scores, top);
    let unscored = GraphEntry {
        score: None,
        in_graph: true,
    };
    let mut graph_nodes = vec![("input".to_string(), unscored)];
    for (c, s) in &node_scores {
        let name = match c {
            Component::Head(h) => upstream_name(Upstream::Head(*h)),
            Component::Mlp(l) => upstream_name(Upstream::Mlp(*l)),
            Component::Path { .. } => continue,
        };
        let entry = GraphEntry {
            score: Some(*s),
            in_graph: kept_nodes.contains(c),
        };
        graph_nodes.push((name, entry));
    }
    graph_nodes.push(("logits".to_string(), unscored));
    let mut graph_edges = Vec::new();
    for (c, s) in &edge_scores {
        if let Component::Path { from, to } = c {
            let entry = GraphEntry {
                score: Some(*s),
                in_graph: kept_edges.contains(c),
            };
            graph_edges.push((
                format!("{}->{}", upstream_name(*from), downstream_name(*to)),
                entry,
            ));
        }
    }
    Graph {
        cfg,
        nodes: graph_nodes,
        edges: graph_edges,
        extra: Map::new(),
    }
    .to_json()
}
