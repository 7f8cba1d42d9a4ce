//! Circuits published by others, in the EAP-IG / MIB graph JSON, as edge-complete `.circuit`
//! files (`circuit import`).
//!
//! The format (written here by [`crate::attribute::export`]): `cfg` (`n_layers`, `n_heads`,
//! `parallel_attn_mlp`, `d_model`), `nodes` named `input`, `a{L}.h{H}`, `m{L}`, `logits`, each
//! with `in_graph`, and `edges` named `U->D` (`a0.h1->a2.h3<q>`, `input->m0`, `m2->logits`),
//! each with `in_graph`. A graph says which edges are kept and nothing about positions, so it is
//! exactly an edge-complete circuit whose edges hold at every position (docs/semantics.md,
//! section 8): every input reads the kept edges' upstream outputs and the reference values of
//! all other upstream components, the embedding (`input`) included.
//!
//! An edge is kept when it is `in_graph` and so are both its nodes (a node listed with
//! `in_graph: false` keeps none of its edges, as EAP-IG's pruning does); the file written says
//! how many edges that removed.

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;
use serde_json::Value;
use thiserror::Error;

use crate::attribute::export::{downstream_name, upstream_name};
use crate::model::{HeadInput, ModelConfig, ResidualTopology};
use crate::resolve::bound::{Downstream, HeadId, Upstream};

/// What can be wrong with a graph file.
#[derive(Debug, Error, Diagnostic)]
pub enum ImportError {
    #[error("{file} is not JSON: {message}")]
    #[diagnostic(
        code(circuit::import::json),
        help("an EAP-IG / MIB graph file is one JSON object with `cfg`, `nodes` and `edges`")
    )]
    Json { file: String, message: String },
    #[error("{file}: {what}")]
    #[diagnostic(
        code(circuit::import::format),
        help("an EAP-IG / MIB graph has `cfg` {{n_layers, n_heads, parallel_attn_mlp, d_model}}, `nodes` {{NAME: {{in_graph}}}} and `edges` {{\"a0.h1->a2.h3<q>\": {{in_graph}}}}")
    )]
    Format { file: String, what: String },
    #[error("{file}: the graph's cfg says {field} = {graph}, but the model has {model}")]
    #[diagnostic(
        code(circuit::import::cfg_mismatch),
        help("the graph was made for another model; pass the model it was made for with --model")
    )]
    CfgMismatch {
        file: String,
        field: &'static str,
        graph: String,
        model: String,
    },
    #[error("{file}: `{name}` is not an edge name")]
    #[diagnostic(
        code(circuit::import::edge_name),
        help("edges are named UPSTREAM->DOWNSTREAM: upstream `input`, `a{{L}}.h{{H}}` or `m{{L}}`; downstream `a{{L}}.h{{H}}<q|k|v>`, `m{{L}}` or `logits` ({reason})")
    )]
    EdgeName {
        file: String,
        name: String,
        reason: String,
    },
    #[error("{file}: `{name}` is not a node name")]
    #[diagnostic(
        code(circuit::import::node_name),
        help("nodes are named `input`, `a{{L}}.h{{H}}`, `m{{L}}` or `logits` ({reason})")
    )]
    NodeName {
        file: String,
        name: String,
        reason: String,
    },
}

/// `a{L}.h{H}` → the head, checked against the model's shape.
fn parse_head(text: &str, n_layers: usize, n_heads: usize) -> Result<HeadId, String> {
    let (layer, head) = text
        .strip_prefix('a')
        .and_then(|rest| rest.split_once(".h"))
        .ok_or_else(|| format!("`{text}` is not `a{{L}}.h{{H}}`"))?;
    let layer = parse_index(layer, n_layers, "layer")?;
    let head = parse_index(head, n_heads, "head")?;
    Ok(HeadId { layer, head })
}

/// A decimal index below `limit`.
fn parse_index(text: &str, limit: usize, what: &str) -> Result<usize, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` is not a {what} index"));
    }
    match text.parse::<usize>() {
        Ok(i) if i < limit => Ok(i),
        _ => Err(format!("{what} {text} is outside the model (0..{limit})")),
    }
}

/// The inverse of [`upstream_name`]: `input`, `a0.h1`, `m2`.
pub fn parse_upstream(text: &str, n_layers: usize, n_heads: usize) -> Result<Upstream, String> {
    if text == "input" {
        return Ok(Upstream::Embed);
    }
    if let Some(layer) = text.strip_prefix('m') {
        return Ok(Upstream::Mlp(parse_index(layer, n_layers, "layer")?));
    }
    Ok(Upstream::Head(parse_head(text, n_layers, n_heads)?))
}

/// The inverse of [`downstream_name`]: `a2.h3<q>`, `m2`, `logits`.
pub fn parse_downstream(text: &str, n_layers: usize, n_heads: usize) -> Result<Downstream, String> {
    if text == "logits" {
        return Ok(Downstream::Logits);
    }
    if let Some(layer) = text.strip_prefix('m') {
        return Ok(Downstream::Mlp(parse_index(layer, n_layers, "layer")?));
    }
    let (head, which) = text
        .strip_suffix('>')
        .and_then(|rest| rest.split_once('<'))
        .ok_or_else(|| format!("a head's input is written `a{{L}}.h{{H}}<q|k|v>`, not `{text}`"))?;
    let which = match which {
        "q" => HeadInput::Q,
        "k" => HeadInput::K,
        "v" => HeadInput::V,
        other => return Err(format!("`{other}` is not q, k or v")),
    };
    Ok(Downstream::Head(
        parse_head(head, n_layers, n_heads)?,
        which,
    ))
}

/// `U->D` as the two ends, checked against the model's shape and its wiring (an edge must go
/// forward).
pub fn parse_edge(
    name: &str,
    n_layers: usize,
    n_heads: usize,
    residual: ResidualTopology,
) -> Result<(Upstream, Downstream), String> {
    let (from, to) = name.split_once("->").ok_or_else(|| "no `->`".to_string())?;
    let from = parse_upstream(from, n_layers, n_heads)?;
    let to = parse_downstream(to, n_layers, n_heads)?;
    if !to.reads(from, residual) {
        return Err(format!(
            "{from} does not reach {to}: the edge goes backwards"
        ));
    }
    Ok((from, to))
}

/// An EAP-IG / MIB graph, read and checked against a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedGraph {
    /// The kept edges, in the model's order (by downstream input, then upstream component).
    pub kept: Vec<(Upstream, Downstream)>,
    /// Edges marked `in_graph` that a node out of the graph removed.
    pub removed_by_nodes: usize,
    /// Every edge the file lists.
    pub n_edges: usize,
}

/// Reads the graph JSON `text` (named `file` in errors) for a model shaped `config`.
pub fn read_graph(
    file: &str,
    text: &str,
    config: &ModelConfig,
) -> Result<ImportedGraph, ImportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ImportError::Json {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    let format = |what: String| ImportError::Format {
        file: file.to_string(),
        what,
    };
    let object = |key: &str| -> Result<&serde_json::Map<String, Value>, ImportError> {
        value
            .get(key)
            .and_then(Value::as_object)
            .ok_or_else(|| format(format!("no `{key}` object")))
    };
    let cfg = object("cfg")?;
    let cfg_usize = |key: &'static str| -> Result<usize, ImportError> {
        cfg.get(key)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| format(format!("`cfg.{key}` is not a non-negative integer")))
    };
    let mismatch = |field: &'static str, graph: String, model: String| ImportError::CfgMismatch {
        file: file.to_string(),
        field,
        graph,
        model,
    };
    for (field, model) in [
        ("n_layers", config.n_layers),
        ("n_heads", config.n_heads),
        ("d_model", config.d_model),
    ] {
        let graph = cfg_usize(field)?;
        if graph != model {
            return Err(mismatch(field, graph.to_string(), model.to_string()));
        }
    }
    let parallel = cfg
        .get("parallel_attn_mlp")
        .and_then(Value::as_bool)
        .ok_or_else(|| format("`cfg.parallel_attn_mlp` is not true or false".to_string()))?;
    let model_parallel = config.residual == ResidualTopology::Parallel;
    if parallel != model_parallel {
        return Err(mismatch(
            "parallel_attn_mlp",
            parallel.to_string(),
            model_parallel.to_string(),
        ));
    }
    let in_graph = |what: &str, name: &str, entry: &Value| -> Result<bool, ImportError> {
        entry
            .get("in_graph")
            .and_then(Value::as_bool)
            .ok_or_else(|| format(format!("{what} `{name}` has no boolean `in_graph`")))
    };
    let (n_layers, n_heads) = (config.n_layers, config.n_heads);

    // Nodes out of the graph, by the components they are.
    let mut out_nodes: BTreeSet<String> = BTreeSet::new();
    for (name, entry) in object("nodes")? {
        let valid = match name.as_str() {
            "logits" => Ok(()),
            _ => parse_upstream(name, n_layers, n_heads).map(|_| ()),
        };
        if let Err(reason) = valid {
            return Err(ImportError::NodeName {
                file: file.to_string(),
                name: name.clone(),
                reason,
            });
        }
        if !in_graph("node", name, entry)? {
            out_nodes.insert(name.clone());
        }
    }

    let mut kept = BTreeMap::new();
    let mut removed_by_nodes = 0;
    let edges = object("edges")?;
    for (name, entry) in edges {
        let (from, to) =
            parse_edge(name, n_layers, n_heads, config.residual).map_err(|reason| {
                ImportError::EdgeName {
                    file: file.to_string(),
                    name: name.clone(),
                    reason,
                }
            })?;
        if !in_graph("edge", name, entry)? {
            continue;
        }
        // The node a downstream input belongs to, as `nodes` names it.
        let to_node = match to {
            Downstream::Head(h, _) => upstream_name(Upstream::Head(h)),
            Downstream::Mlp(l) => upstream_name(Upstream::Mlp(l)),
            Downstream::Logits => "logits".to_string(),
        };
        if out_nodes.contains(&upstream_name(from)) || out_nodes.contains(&to_node) {
            removed_by_nodes += 1;
            continue;
        }
        kept.insert((to, from), ());
    }
    Ok(ImportedGraph {
        kept: kept.into_keys().map(|(to, from)| (from, to)).collect(),
        removed_by_nodes,
        n_edges: edges.len(),
    })
}

/// How a component is written in a `.circuit` file's path edge.
fn written(u: Upstream) -> String {
    u.to_string()
}

/// The `.circuit` text of an imported graph: the settings (`model`, `dataset d = DATASET`,
/// `ablate heads and mlps by mean`: the field's graphs ablate MLPs too) and one edge-complete
/// circuit `name` with one path-edge statement per downstream input that keeps any edge, in
/// canonical form. `model` and `dataset` are written as given (the model as a string; the
/// dataset as a generator call, or a string when it names a `.jsonl` file). `source` names
/// the graph file in the header comment.
pub fn circuit_text(
    graph: &ImportedGraph,
    source: &str,
    model: &str,
    dataset: &str,
    name: &str,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# Imported by `circuit import` from {source} (EAP-IG / MIB graph JSON):\n# {} of its {} edges are kept, at every position (the format has no positions).\n",
        graph.kept.len(),
        graph.n_edges
    ));
    if graph.removed_by_nodes > 0 {
        out.push_str(&format!(
            "# {} edges marked in_graph were left out because one of their nodes is not in the graph.\n",
            graph.removed_by_nodes
        ));
    }
    out.push_str(&format!("model \"{model}\"\n"));
    if dataset.ends_with(".jsonl") {
        out.push_str(&format!("dataset d = \"{dataset}\"\n"));
    } else {
        out.push_str(&format!("dataset d = {dataset}\n"));
    }
    out.push_str("ablate heads and mlps by mean\n\n");
    out.push_str(&format!("edge-complete circuit {name} {{\n"));
    let mut by_input: Vec<(Downstream, Vec<Upstream>)> = Vec::new();
    for &(from, to) in &graph.kept {
        match by_input.last_mut() {
            Some((d, ups)) if *d == to => ups.push(from),
            _ => by_input.push((to, vec![from])),
        }
    }
    for (to, ups) in by_input {
        let ups: Vec<String> = ups.into_iter().map(written).collect();
        out.push_str(&format!("  edge {} -> {to}\n", ups.join(", ")));
    }
    out.push_str("}\n");
    out
}

/// Every edge name of a model shaped `n_layers` × `n_heads` wired as `residual`, as the format
/// writes them (for tests and for writing a circuit's graph).
pub fn every_edge_name(n_layers: usize, n_heads: usize, residual: ResidualTopology) -> Vec<String> {
    let mut ups = vec![Upstream::Embed];
    let mut downs = Vec::new();
    for layer in 0..n_layers {
        for head in 0..n_heads {
            let h = HeadId { layer, head };
            ups.push(Upstream::Head(h));
            downs
                .extend([HeadInput::Q, HeadInput::K, HeadInput::V].map(|w| Downstream::Head(h, w)));
        }
        ups.push(Upstream::Mlp(layer));
        downs.push(Downstream::Mlp(layer));
    }
    downs.push(Downstream::Logits);
    let mut names = Vec::new();
    for &d in &downs {
        for &u in &ups {
            if d.reads(u, residual) {
                names.push(format!("{}->{}", upstream_name(u), downstream_name(d)));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests;
