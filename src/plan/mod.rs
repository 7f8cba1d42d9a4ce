//! The ablation plan a resolved circuit compiles to: per prompt, which head outputs, edge terms
//! and MLP outputs keep their clean values.
//!
//! A [`BoundCircuit`] names positions (`S1+1`, `END`); a [`Plan`] names token indices, one set of
//! masks per evaluated prompt, because positions resolve per prompt. The plan is pure data: it
//! says *what* keeps its clean value, and [`crate::ablate`] decides what an ablated value becomes
//! (mean, zero, resample). Two circuits that compile to equal plans give equal numbers, which is
//! what lets the evaluator memoize by plan.

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;
use ndarray::{Array2, Array3};
use thiserror::Error;

use crate::data::positions::{PositionItem, PositionSet};
use crate::model::backward::Writer;
use crate::model::{HeadInput, ResidualTopology};
use crate::resolve::bound::{BoundCircuit, Downstream, HeadId, Scope, Upstream};

/// One evaluated prompt as the plan sees it: its token count, and how the circuit's position
/// names resolve in it. The dataset stage implements this for its tokenized prompts; tests
/// implement it by hand.
pub trait PromptPositions {
    /// Number of tokens of the prompt (BOS included when the tokenizer adds one).
    fn token_count(&self) -> usize;
    /// The token indices a position set names in this prompt. An error must name the prompt.
    fn resolve_positions(&self, set: &PositionSet) -> miette::Result<BTreeSet<usize>>;
    /// How errors name this prompt, e.g. `prompt 3 ("1 2 3 4")`.
    fn describe(&self) -> String;
}

/// Errors compiling a circuit into a plan. Position errors from the dataset (a label missing
/// from a prompt, an offset leaving it) pass through as the dataset reported them.
#[derive(Debug, Error, Diagnostic)]
pub enum PlanError {
    #[error(
        "circuit `{circuit}`: position {position} is outside {prompt}, which has {len} tokens"
    )]
    #[diagnostic(
        code(circuit::plan::position_outside_prompt),
        help("positions are token indices 0..{len}; check the offsets used with this label")
    )]
    PositionOutside {
        circuit: String,
        prompt: String,
        position: usize,
        len: usize,
    },
    #[error("circuit `{circuit}`: {component} {what} is outside the model ({limit})")]
    #[diagnostic(code(circuit::plan::component_outside_model))]
    ComponentOutside {
        circuit: String,
        component: String,
        what: &'static str,
        limit: String,
    },
    #[error("circuit `{circuit}`: path edge {from} -> {to} does not go forward through the model")]
    #[diagnostic(
        code(circuit::plan::backward_path_edge),
        help("a path edge's upstream component must come before the input it enters: a head of layer L reads heads and MLPs of layers < L; the MLP of layer L also reads the heads of layer L")
    )]
    BackwardPathEdge {
        circuit: String,
        from: String,
        to: String,
    },
    #[error("circuit `{circuit}`: `{edge}` carries nothing: its keys come after its queries in every evaluated prompt (e.g. {example})")]
    #[diagnostic(
        code(circuit::plan::key_after_query),
        help("attention is causal: a query reads keys at or before itself; swap key and query (`edge HEAD: KEY -> QUERY`) or delete the edge")
    )]
    KeyAfterQuery {
        circuit: String,
        edge: String,
        example: String,
    },
    #[error("circuit `{circuit}`: `{edge}` reaches outside its head's sliding window: in {prompt} the query at token {query} sees only the {window} keys at tokens {first}..={query}, and the edge's keys there are older (the latest at token {key})")]
    #[diagnostic(
        code(circuit::plan::key_outside_window),
        help("layer {layer} attends to the last {window} keys only (sliding-window attention), so the edge carries nothing at that query; name keys within the window of each query")
    )]
    KeyOutsideWindow {
        circuit: String,
        edge: String,
        layer: usize,
        prompt: String,
        query: usize,
        key: usize,
        first: usize,
        window: usize,
    },
}

/// The model shape a plan is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanShape {
    pub n_layers: usize,
    pub n_heads: usize,
    /// Which components each input reads (path edges must go forward along it).
    pub residual: ResidualTopology,
}

impl PlanShape {
    /// Number of upstream components a path edge can carry: every head, then every MLP, then
    /// the embedding.
    pub fn n_upstream(&self) -> usize {
        self.n_layers * self.n_heads + self.n_layers + 1
    }

    /// Index of an upstream component in a path-edge mask's last axis.
    /// The backward reads the masks in the same order ([`Writer::index`] owns it).
    pub fn upstream_index(&self, upstream: Upstream) -> usize {
        let writer = match upstream {
            Upstream::Head(h) => Writer::Head {
                layer: h.layer,
                head: h.head,
            },
            Upstream::Mlp(layer) => Writer::Mlp(layer),
            Upstream::Embed => Writer::Embed,
        };
        writer.index(self.n_layers, self.n_heads)
    }

    /// Every input of the model a path edge can enter, in the forward's order: per layer each
    /// head's q, k and v, then the MLP's input; then the logits.
    pub fn downstream_inputs(&self) -> Vec<Downstream> {
        let mut inputs = Vec::new();
        for layer in 0..self.n_layers {
            for head in 0..self.n_heads {
                for which in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                    inputs.push(Downstream::Head(HeadId { layer, head }, which));
                }
            }
            inputs.push(Downstream::Mlp(layer));
        }
        inputs.push(Downstream::Logits);
        inputs
    }
}

/// The QK-edge terms kept at one (prompt, query position, head) where the circuit lists edges
/// for a head whose output is kept there. Every key position not listed has its term
/// `A[q,k]·v[k]` ablated (edge mean) or its score knocked out (knockout).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QkQuery {
    /// Index of the prompt in the evaluated set.
    pub prompt: usize,
    pub query: usize,
    pub head: usize,
    /// Kept key positions, ascending; positions after the query are dropped (a causal model's
    /// pattern is zero there, so they carry nothing).
    pub keys: Vec<usize>,
}

/// A compiled circuit: for every evaluated prompt, what keeps its clean value.
///
/// Masks are padded to the longest prompt `T`; entries at padding positions are `true` (kept:
/// padding is never read by a real token under the causal mask, so leaving it alone is
/// cheapest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    pub shape: PlanShape,
    /// Token count of each prompt.
    pub prompt_lens: Vec<usize>,
    /// Per layer, `(B, T, H)`: whether head `h`'s output `z` at query `t` of prompt `b` keeps
    /// its clean value.
    pub head_keep: Vec<Array3<bool>>,
    /// Per layer: the queries where only some QK edges are kept, ordered by (prompt, query,
    /// head).
    pub qk_queries: Vec<Vec<QkQuery>>,
    /// Per layer, `(B, T)`: whether the MLP's output keeps its clean value. All `true` under
    /// [`Scope::Heads`], where MLPs are outside the ablation.
    pub mlp_keep: Vec<Array2<bool>>,
    /// Per downstream input named by some path edge, `(B, T, U)` with `U` =
    /// [`PlanShape::n_upstream`]: whether upstream component `u`'s output in this forward
    /// reaches the input at `t` of prompt `b`; upstream components not kept reach it as their
    /// ablated value (reference mean by default).
    pub path_inputs: BTreeMap<Downstream, Array3<bool>>,
    /// Whether MLP outputs are in scope of ablation (also decides whether a path edge can
    /// replace an MLP's contribution to a downstream input).
    pub scope_includes_mlps: bool,
}

impl Plan {
    /// The full model: nothing ablated.
    pub fn full(shape: PlanShape, prompt_lens: &[usize], scope: Scope) -> Plan {
        Plan::uniform(shape, prompt_lens, scope, true)
    }

    /// The empty circuit: everything in scope ablated at every position.
    pub fn empty(shape: PlanShape, prompt_lens: &[usize], scope: Scope) -> Plan {
        Plan::uniform(shape, prompt_lens, scope, false)
    }

    fn uniform(shape: PlanShape, prompt_lens: &[usize], scope: Scope, keep: bool) -> Plan {
        let n_prompts = prompt_lens.len();
        let max_len = prompt_lens.iter().copied().max().unwrap_or(0);
        let scope_includes_mlps = scope == Scope::HeadsAndMlps;
        let mut head_mask = Array3::from_elem((n_prompts, max_len, shape.n_heads), true);
        let mut mlp_mask = Array2::from_elem((n_prompts, max_len), true);
        for (b, &len) in prompt_lens.iter().enumerate() {
            for t in 0..len {
                for h in 0..shape.n_heads {
                    head_mask[[b, t, h]] = keep;
                }
                if scope_includes_mlps {
                    mlp_mask[[b, t]] = keep;
                }
            }
        }
        Plan {
            shape,
            prompt_lens: prompt_lens.to_vec(),
            head_keep: vec![head_mask; shape.n_layers],
            qk_queries: vec![Vec::new(); shape.n_layers],
            mlp_keep: vec![mlp_mask; shape.n_layers],
            path_inputs: BTreeMap::new(),
            scope_includes_mlps,
        }
    }

    pub fn n_prompts(&self) -> usize {
        self.prompt_lens.len()
    }

    /// Longest prompt: the padded length `T` of every mask.
    pub fn max_len(&self) -> usize {
        self.head_keep
            .first()
            .map(|m| m.shape()[1])
            .unwrap_or_else(|| self.prompt_lens.iter().copied().max().unwrap_or(0))
    }

    /// Whether this plan leaves the forward pass untouched (the full model).
    pub fn is_identity(&self) -> bool {
        self.head_keep.iter().all(|m| m.iter().all(|&k| k))
            && self.qk_queries.iter().all(|q| q.is_empty())
            && self.mlp_keep.iter().all(|m| m.iter().all(|&k| k))
            && self.path_inputs.is_empty()
    }

    /// Whether the plan has path edges (the forward then records per-component outputs).
    pub fn has_path_edges(&self) -> bool {
        !self.path_inputs.is_empty()
    }

    /// Heads that have QK-edge queries somewhere: their reference edge terms are needed.
    pub fn edge_heads(&self) -> BTreeSet<HeadId> {
        let mut heads = BTreeSet::new();
        for (layer, queries) in self.qk_queries.iter().enumerate() {
            for q in queries {
                heads.insert(HeadId {
                    layer,
                    head: q.head,
                });
            }
        }
        heads
    }

    /// A stable content key for memoizing results within a run.
    pub fn content_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut put = |x: usize| hasher.update((x as u64).to_le_bytes());
        put(self.shape.n_layers);
        put(self.shape.n_heads);
        put(self.scope_includes_mlps as usize);
        put(self.prompt_lens.len());
        self.prompt_lens.iter().for_each(|&l| put(l));
        for mask in &self.head_keep {
            mask.iter().for_each(|&k| put(k as usize));
        }
        for queries in &self.qk_queries {
            put(usize::MAX);
            for q in queries {
                put(q.prompt);
                put(q.query);
                put(q.head);
                put(q.keys.len());
                q.keys.iter().for_each(|&k| put(k));
            }
        }
        for mask in &self.mlp_keep {
            mask.iter().for_each(|&k| put(k as usize));
        }
        for (downstream, mask) in &self.path_inputs {
            put(usize::MAX - 1);
            let (tag, a, b) = match *downstream {
                Downstream::Head(h, which) => (1 + which as usize, h.layer, h.head),
                Downstream::Mlp(l) => (10, l, 0),
                Downstream::Logits => (11, 0, 0),
            };
            put(tag);
            put(a);
            put(b);
            mask.iter().for_each(|&k| put(k as usize));
        }
        hex::encode(hasher.finalize())
    }
}

/// Compiles `circuit` for the prompts `prompts` of a model shaped `shape`.
///
/// A head keeps `z` at the query positions of its node statement (`circuit.heads`) and at the
/// queries of its QK edges, and is ablated everywhere else. At a query some edge of the head
/// names, the kept keys are the union of the keys of every edge of that head naming that query;
/// at the node's other queries every key is kept.
/// Under [`Scope::Heads`] MLPs are never ablated.
pub fn compile(
    circuit: &BoundCircuit,
    scope: Scope,
    shape: PlanShape,
    prompts: &[&dyn PromptPositions],
) -> miette::Result<Plan> {
    let prompt_lens: Vec<usize> = prompts.iter().map(|p| p.token_count()).collect();
    // An edge-complete circuit ablates no node: every head and MLP computes on the inputs its
    // edges rebuild.
    let mut plan = match circuit.edge_complete {
        true => Plan::full(shape, &prompt_lens, scope),
        false => Plan::empty(shape, &prompt_lens, scope),
    };
    check_components(circuit, shape)?;

    // A downstream input named by any path edge (in an edge-complete circuit: every input)
    // keeps, at each real position, only the upstream components whose edge names that
    // position; padding stays untouched (true). Outside the edge-complete form the embedding
    // is always kept.
    let max_len = plan.max_len();
    let inputs = match circuit.edge_complete {
        true => shape.downstream_inputs(),
        false => circuit.path_edges.iter().map(|e| e.to).collect(),
    };
    let embed = shape.upstream_index(Upstream::Embed);
    for input in inputs {
        plan.path_inputs.entry(input).or_insert_with(|| {
            let mut mask = Array3::from_elem((prompts.len(), max_len, shape.n_upstream()), true);
            for (b, &len) in prompt_lens.iter().enumerate() {
                mask.slice_mut(ndarray::s![b, ..len, ..]).fill(false);
                if !circuit.edge_complete {
                    mask.slice_mut(ndarray::s![b, ..len, embed]).fill(true);
                }
            }
            mask
        });
    }

    for (b, prompt) in prompts.iter().enumerate() {
        let resolve = |set: &PositionSet| -> miette::Result<BTreeSet<usize>> {
            let positions = prompt.resolve_positions(set)?;
            if let Some(&position) = positions.iter().find(|&&p| p >= prompt.token_count()) {
                return Err(PlanError::PositionOutside {
                    circuit: circuit.name.clone(),
                    prompt: prompt.describe(),
                    position,
                    len: prompt.token_count(),
                }
                .into());
            }
            Ok(positions)
        };

        for (head, positions) in &circuit.heads {
            for t in resolve(positions)? {
                plan.head_keep[head.layer][[b, t, head.head]] = true;
            }
        }

        if plan.scope_includes_mlps {
            for (&layer, positions) in &circuit.mlps {
                for t in resolve(positions)? {
                    plan.mlp_keep[layer][[b, t]] = true;
                }
            }
        }

        // (layer, query, head) -> kept keys, for this prompt.
        let mut kept_keys: BTreeMap<(usize, usize, usize), BTreeSet<usize>> = BTreeMap::new();
        for edge in &circuit.qk_edges {
            let queries = resolve(&item_set(&edge.queries))?;
            let keys = resolve(&item_set(&edge.keys))?;
            for &q in &queries {
                // An edge implies its node: the head is kept at the edge's queries, reading
                // only from the keys its edges there name.
                plan.head_keep[edge.head.layer][[b, q, edge.head.head]] = true;
                kept_keys
                    .entry((edge.head.layer, q, edge.head.head))
                    .or_default()
                    .extend(keys.iter().copied().filter(|&k| k <= q));
            }
        }
        for ((layer, query, head), keys) in kept_keys {
            plan.qk_queries[layer].push(QkQuery {
                prompt: b,
                query,
                head,
                keys: keys.into_iter().collect(),
            });
        }

        for edge in &circuit.path_edges {
            let mask = plan
                .path_inputs
                .get_mut(&edge.to)
                .expect("a mask exists for every downstream input named by a path edge");
            let u = shape.upstream_index(edge.from);
            for t in resolve(&edge.positions)? {
                mask[[b, t, u]] = true;
            }
        }
    }

    for queries in &mut plan.qk_queries {
        queries.sort_by_key(|q| (q.prompt, q.query, q.head));
    }
    Ok(plan)
}

/// Checks, per prompt, that each QK edge of `circuit` can carry something: under the causal
/// mask a key after its query carries nothing. An edge whose keys all come after its queries in
/// every prompt is an error ([`PlanError::KeyAfterQuery`]); one where that happens in some
/// prompts only gives a note naming them (for the report). The resolver rejects the cases that
/// hold whatever the tokens (`S1+1 -> S1`) before any prompt is read.
pub fn check_key_order(
    circuit: &BoundCircuit,
    prompts: &[&dyn PromptPositions],
) -> miette::Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut seen: Vec<(&PositionItem, &PositionItem, &std::ops::Range<usize>)> = Vec::new();
    for edge in &circuit.qk_edges {
        // One finding per written `KEY -> QUERY`, however many heads it names.
        let written = (&edge.keys, &edge.queries, &edge.span);
        if seen.contains(&written) {
            continue;
        }
        seen.push(written);
        let mut empty_in = Vec::new();
        for (b, prompt) in prompts.iter().enumerate() {
            let keys = prompt.resolve_positions(&item_set(&edge.keys))?;
            let queries = prompt.resolve_positions(&item_set(&edge.queries))?;
            let carries = matches!((keys.first(), queries.last()), (Some(k), Some(q)) if k <= q);
            if !carries {
                empty_in.push(b);
            }
        }
        let Some(&first) = empty_in.first() else {
            continue;
        };
        if empty_in.len() == prompts.len() {
            return Err(PlanError::KeyAfterQuery {
                circuit: circuit.name.clone(),
                edge: edge.to_string(),
                example: prompts[first].describe(),
            }
            .into());
        }
        notes.push(format!(
            "circuit `{}`: `{edge}` carries nothing in {} of {} prompts (e.g. {}): its keys come after its queries there",
            circuit.name,
            empty_in.len(),
            prompts.len(),
            prompts[first].describe()
        ));
    }
    Ok(notes)
}

/// Marks the keys a sliding window hides from each listed query (`attention_windows[layer]`)
/// as kept: they carry nothing (their pattern is zero), and a kept term is left alone, so
/// edge-mean ablation and knockout touch only the keys a query sees, and keeping every
/// visible key is keeping the node, bit for bit (the many-kept form of docs/semantics.md
/// section 2 then sums no term).
pub fn keep_keys_outside_windows(plan: &mut Plan, attention_windows: &[Option<usize>]) {
    for (queries, window) in plan.qk_queries.iter_mut().zip(attention_windows) {
        for query in queries.iter_mut() {
            let first = *crate::model::visible_keys(*window, query.query).start();
            if first > 0 {
                let visible = query.keys.iter().copied().filter(|&k| k >= first);
                query.keys = (0..first).chain(visible).collect();
            }
        }
    }
}

/// Checks, per prompt, that each QK edge of `circuit` reaches its head's sliding window (if its
/// layer has one, `attention_windows[layer]`, [`crate::model::visible_keys`]) at every query
/// it names: a query sees only its last `w` keys, so an edge whose keys at or before the query
/// are all older carries nothing there and is an error ([`PlanError::KeyOutsideWindow`])
/// naming the head, the positions and the window. Keys of a range (`*`, `S1..END`) outside the
/// window are dropped like keys after the query (their pattern is zero); keys after the query
/// are [`check_key_order`]'s.
pub fn check_windows(
    circuit: &BoundCircuit,
    attention_windows: &[Option<usize>],
    prompts: &[&dyn PromptPositions],
) -> miette::Result<()> {
    for edge in &circuit.qk_edges {
        let Some(window) = attention_windows.get(edge.head.layer).copied().flatten() else {
            continue;
        };
        for prompt in prompts {
            let keys = prompt.resolve_positions(&item_set(&edge.keys))?;
            let queries = prompt.resolve_positions(&item_set(&edge.queries))?;
            for &query in &queries {
                let visible = crate::model::visible_keys(Some(window), query);
                let latest = keys.range(..=query).next_back();
                if let Some(&key) = latest.filter(|&&k| k < *visible.start()) {
                    return Err(PlanError::KeyOutsideWindow {
                        circuit: circuit.name.clone(),
                        edge: edge.to_string(),
                        layer: edge.head.layer,
                        prompt: prompt.describe(),
                        query,
                        key,
                        first: *visible.start(),
                        window,
                    }
                    .into());
                }
            }
        }
    }
    Ok(())
}

fn item_set(item: &PositionItem) -> PositionSet {
    PositionSet::Items(vec![item.clone()])
}

/// Layers and heads must exist in the model, and path edges must go forward. The resolver
/// checks names against the config already; this guards the plan against hand-built circuits.
fn check_components(circuit: &BoundCircuit, shape: PlanShape) -> Result<(), PlanError> {
    let outside =
        |component: String, what: &'static str, limit: String| PlanError::ComponentOutside {
            circuit: circuit.name.clone(),
            component,
            what,
            limit,
        };
    let check_head = |h: &HeadId| -> Result<(), PlanError> {
        if h.layer >= shape.n_layers {
            return Err(outside(
                format!("head {h}"),
                "layer",
                format!("layers 0..{}", shape.n_layers),
            ));
        }
        if h.head >= shape.n_heads {
            return Err(outside(
                format!("head {h}"),
                "head index",
                format!("heads 0..{}", shape.n_heads),
            ));
        }
        Ok(())
    };
    let check_layer = |l: usize| -> Result<(), PlanError> {
        if l >= shape.n_layers {
            return Err(outside(
                format!("mlp {l}"),
                "layer",
                format!("layers 0..{}", shape.n_layers),
            ));
        }
        Ok(())
    };
    circuit.heads.keys().try_for_each(check_head)?;
    circuit.mlps.keys().try_for_each(|&l| check_layer(l))?;
    circuit
        .qk_edges
        .iter()
        .try_for_each(|e| check_head(&e.head))?;
    for edge in &circuit.path_edges {
        match edge.from {
            Upstream::Head(h) => check_head(&h)?,
            Upstream::Mlp(l) => check_layer(l)?,
            Upstream::Embed => {}
        }
        match edge.to {
            Downstream::Head(h, _) => check_head(&h)?,
            Downstream::Mlp(l) => check_layer(l)?,
            Downstream::Logits => {}
        }
        if !edge.to.reads(edge.from, shape.residual) {
            return Err(PlanError::BackwardPathEdge {
                circuit: circuit.name.clone(),
                from: edge.from.to_string(),
                to: edge.to.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
