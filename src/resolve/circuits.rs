//! Circuits: `extends` chains, node and edge statements, overrides and `drop`.

use std::collections::{BTreeMap, HashMap};

use super::binder::{backticked, Binder, NamedHead};
use super::bound::*;
use super::diagnostics as code;
use crate::data::positions::{PositionItem as BItem, PositionSet};
use crate::model::{HeadInput, ResidualTopology, Unread};
use crate::syntax::ast::{self, Span};
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

/// State of a circuit while its statements are applied.
#[derive(Clone, Default)]
struct CircuitState {
    heads: BTreeMap<HeadId, PositionSet>,
    mlps: BTreeMap<usize, PositionSet>,
    qk_edges: Vec<QkEdge>,
    path_edges: Vec<PathEdge>,
}

impl<'a> Binder<'a> {
    pub(super) fn circuits(&mut self, file: &'a ast::File) -> Vec<BoundCircuit> {
        let mut defs: Vec<(&ast::Circuit, Span)> = Vec::new();
        for item in &file.items {
            if let ast::ItemKind::Circuit(c) = &item.kind {
                if c.name.name == "full" || c.name.name == "empty" {
                    self.error(
                        SourceDiagnostic::error(
                            code::RESERVED_NAME,
                            format!("`{}` cannot name a circuit", c.name.name),
                        )
                        .with_label(c.name.span.clone(), "reserved")
                        .with_help("`full` and `empty` name the full model and the empty circuit in expectations (`full.logit_diff`); choose another name"),
                    );
                }
                if let Some(&prev) = self.circuit_names.get(&c.name.name) {
                    let prev_span = defs[prev].0.name.span.clone();
                    self.error(
                        SourceDiagnostic::error(
                            code::DUPLICATE_CIRCUIT,
                            format!("the circuit `{}` is defined twice", c.name.name),
                        )
                        .with_label(c.name.span.clone(), "defined again here")
                        .with_label(prev_span, "first defined here")
                        .with_help("circuit names must be unique in a file; a variant can be `circuit NEW extends OLD`"),
                    );
                } else {
                    self.circuit_names.insert(c.name.name.clone(), defs.len());
                }
                defs.push((c, item.span.clone()));
            }
        }
        let mut states: Vec<Option<Option<CircuitState>>> = vec![None; defs.len()];
        let mut out = Vec::new();
        for i in 0..defs.len() {
            let mut stack = Vec::new();
            let state = self.circuit_state(i, &defs, &mut states, &mut stack);
            let (circuit, span) = &defs[i];
            let expectations = circuit
                .body
                .iter()
                .filter_map(|st| match &st.kind {
                    ast::StatementKind::Expect {
                        lhs,
                        comparison,
                        rhs,
                    } => Some(self.expectation(lhs, *comparison, rhs, st.span.clone())),
                    _ => None,
                })
                .collect::<Vec<_>>();
            let state = state.unwrap_or_default();
            out.push(BoundCircuit {
                name: circuit.name.name.clone(),
                edge_complete: circuit.edge_complete,
                heads: state.heads,
                mlps: state.mlps,
                qk_edges: state.qk_edges,
                path_edges: state.path_edges,
                expectations: expectations.into_iter().flatten().collect(),
                span: span.clone(),
            });
        }
        out
    }

    /// The heads, MLPs and edges of circuit `i`, following `extends` (memoized; `stack`
    /// holds the circuits being built, to report cycles).
    fn circuit_state(
        &mut self,
        i: usize,
        defs: &[(&'a ast::Circuit, Span)],
        states: &mut Vec<Option<Option<CircuitState>>>,
        stack: &mut Vec<usize>,
    ) -> Option<CircuitState> {
        if let Some(done) = &states[i] {
            return done.clone();
        }
        let circuit = defs[i].0;
        stack.push(i);
        let mut state = CircuitState::default();
        if let Some(base) = &circuit.base {
            match self.circuit_names.get(&base.name).copied() {
                None => {
                    let mut names: Vec<String> = Vec::new();
                    for def in defs {
                        if !names.contains(&def.0.name.name) {
                            names.push(def.0.name.name.clone());
                        }
                    }
                    let mut d = SourceDiagnostic::error(
                        code::UNKNOWN_CIRCUIT,
                        format!("no circuit named `{}`", base.name),
                    )
                    .with_label(base.span.clone(), "extends an undefined circuit");
                    d = match did_you_mean(&base.name, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help(format!(
                            "a circuit can extend any circuit of the same file: {}",
                            backticked(&names)
                        )),
                    };
                    self.error(d);
                }
                Some(b) if stack.contains(&b) => {
                    let from = stack.iter().position(|&x| x == b).unwrap_or(0);
                    let cycle: Vec<String> = stack[from..]
                        .iter()
                        .chain(std::iter::once(&b))
                        .map(|&x| defs[x].0.name.name.clone())
                        .collect();
                    self.error(
                        SourceDiagnostic::error(
                            code::EXTENDS_CYCLE,
                            format!("`extends` forms a cycle: {}", cycle.join(" → ")),
                        )
                        .with_label(base.span.clone(), "closes the cycle")
                        .with_help("a circuit cannot extend itself, directly or through others"),
                    );
                }
                Some(b) if defs[b].0.edge_complete != circuit.edge_complete => {
                    let form = |edge_complete: bool| {
                        if edge_complete {
                            "an edge-complete circuit"
                        } else {
                            "a node-based circuit"
                        }
                    };
                    self.error(
                        SourceDiagnostic::error(
                            code::FORM_MISMATCH,
                            format!(
                                "`{}` is {} but extends `{}`, which is {}",
                                circuit.name.name,
                                form(circuit.edge_complete),
                                base.name,
                                form(defs[b].0.edge_complete)
                            ),
                        )
                        .with_label(base.span.clone(), "a circuit of the other form")
                        .with_help("a circuit extends only circuits of its own form: write `edge-complete` before both `circuit`s or before neither"),
                    );
                }
                Some(b) => {
                    if let Some(base_state) = self.circuit_state(b, defs, states, stack) {
                        state = base_state;
                    }
                }
            }
        }
        self.apply_statements(circuit, &mut state);
        stack.pop();
        states[i] = Some(Some(state.clone()));
        Some(state)
    }

    fn apply_statements(&mut self, circuit: &ast::Circuit, state: &mut CircuitState) {
        // Heads and MLPs named in this circuit (first span), for overrides and the
        // listed-twice warning.
        let mut named_heads: HashMap<HeadId, Span> = HashMap::new();
        let mut named_mlps: HashMap<usize, Span> = HashMap::new();
        let mut own_edges: Vec<(QkEdge, Span, Span)> = Vec::new();
        for st in &circuit.body {
            if circuit.edge_complete {
                let what = match &st.kind {
                    ast::StatementKind::HeadNode { .. } => Some("a head node"),
                    ast::StatementKind::MlpNode { .. } => Some("an MLP node"),
                    ast::StatementKind::QkEdge { .. } => Some("a QK edge"),
                    _ => None,
                };
                if let Some(what) = what {
                    self.error(
                        SourceDiagnostic::error(
                            code::NODE_IN_EDGE_COMPLETE,
                            format!(
                                "{what} in the edge-complete circuit `{}`",
                                circuit.name.name
                            ),
                        )
                        .with_label(st.span.clone(), "not a path edge")
                        .with_help("an edge-complete circuit is a set of path edges only (`edge FROM -> TO`): every component computes, and what reaches an input is decided by its edges; to keep a head's output everywhere, keep its edges into every input that reads it"),
                    );
                    continue;
                }
            }
            match &st.kind {
                ast::StatementKind::HeadNode { heads, positions } => {
                    let set = self.positions(positions.as_ref());
                    let expanded: Vec<NamedHead> =
                        heads.iter().flat_map(|a| self.expand_atom(a)).collect();
                    for (head, span) in expanded {
                        if let Some(first) = named_heads.get(&head) {
                            let first = first.clone();
                            self.error(
                                SourceDiagnostic::warning(
                                    code::DUPLICATE_HEAD,
                                    format!("head {head} is listed twice in circuit `{}`", circuit.name.name),
                                )
                                .with_label(span.clone(), format!("{head} again"))
                                .with_label(first, "first listed here")
                                .with_help("its positions are the union of both; list each head once to make that explicit"),
                            );
                            let merged = union(state.heads.get(&head), &set);
                            state.heads.insert(head, merged);
                        } else {
                            named_heads.insert(head, span);
                            state.heads.insert(head, set.clone());
                        }
                    }
                }
                ast::StatementKind::MlpNode { layers, positions } => {
                    let set = self.positions(positions.as_ref());
                    for sel in layers {
                        for layer in self.expand_layers(sel) {
                            if let Some(first) = named_mlps.get(&layer) {
                                let first = first.clone();
                                self.error(
                                    SourceDiagnostic::warning(
                                        code::DUPLICATE_MLP,
                                        format!(
                                            "MLP {layer} is listed twice in circuit `{}`",
                                            circuit.name.name
                                        ),
                                    )
                                    .with_label(sel.span(), format!("MLP {layer} again"))
                                    .with_label(first, "first listed here")
                                    .with_help("its positions are the union of both"),
                                );
                                let merged = union(state.mlps.get(&layer), &set);
                                state.mlps.insert(layer, merged);
                            } else {
                                named_mlps.insert(layer, sel.span());
                                state.mlps.insert(layer, set.clone());
                            }
                        }
                    }
                }
                ast::StatementKind::QkEdge { heads, pairs } => {
                    let expanded: Vec<NamedHead> =
                        heads.iter().flat_map(|a| self.expand_atom(a)).collect();
                    let bound_pairs: Vec<(BItem, BItem, Span, Span)> = pairs
                        .iter()
                        .map(|p| {
                            (
                                self.position_item(&p.key),
                                self.position_item(&p.query),
                                p.key.span(),
                                p.query.span(),
                            )
                        })
                        .collect();
                    for (head, _) in &expanded {
                        for (keys, queries, key_span, query_span) in &bound_pairs {
                            let edge = QkEdge {
                                head: *head,
                                keys: keys.clone(),
                                queries: queries.clone(),
                                span: st.span.clone(),
                            };
                            own_edges.push((edge.clone(), key_span.clone(), query_span.clone()));
                            state.qk_edges.push(edge);
                        }
                    }
                }
                ast::StatementKind::PathEdge {
                    from,
                    to,
                    positions,
                } => {
                    let ups: Vec<(Upstream, Span)> =
                        from.iter().flat_map(|c| self.expand_component(c)).collect();
                    if !self.embed_allowed(circuit, &ups) {
                        continue;
                    }
                    let downs = self.expand_downstream(to);
                    let set = self.positions(positions.as_ref());
                    let mut reported = false;
                    let topology = self.config.as_ref().map(|c| c.residual).unwrap_or_default();
                    for (up, up_span) in &ups {
                        for down in &downs {
                            let why = topology.why_unread(down.component(), up.component());
                            if let (false, Some(why)) = (reported, why) {
                                reported = true;
                                let (message, label, help) = match why {
                                    Unread::Backwards => (
                                        format!("the edge from {up} to {down} goes backwards"),
                                        "runs after",
                                        match topology {
                                            ResidualTopology::Sequential => "a path edge goes from an earlier component to a later one (a head's output reaches later layers; an MLP reads its own layer's attention output)".to_string(),
                                            ResidualTopology::Parallel => "a path edge goes from an earlier component to a later one (a head's output reaches later layers; under this model's parallel residual wiring an MLP does not read its own layer's attention)".to_string(),
                                        },
                                    ),
                                    Unread::ParallelSameLayer { layer } => (
                                        format!("the edge from {up} to {down} cannot exist: this model's MLP {layer} does not read layer {layer}'s heads"),
                                        "adds beside that MLP, not into its input",
                                        format!(
                                            "the model is wired in parallel (config.json `use_parallel_residual`, as GPT-NeoX / Pythia): attention and MLP of layer {layer} both read the residual stream entering layer {layer}; {}",
                                            match layer {
                                                0 => "no head's output reaches mlp 0".to_string(),
                                                l => format!("a head's edge into mlp {l} starts at layer {} or earlier", l - 1),
                                            }
                                        ),
                                    ),
                                };
                                self.error(
                                    SourceDiagnostic::error(code::BACKWARD_EDGE, message)
                                        .with_label(up_span.clone(), label)
                                        .with_label(to.span(), "this input")
                                        .with_help(help),
                                );
                            }
                            state.path_edges.push(PathEdge {
                                from: *up,
                                to: *down,
                                positions: set.clone(),
                                span: st.span.clone(),
                            });
                        }
                    }
                }
                ast::StatementKind::Drop(items) => {
                    for c in items {
                        let ups = self.expand_component(c);
                        if !self.embed_allowed(circuit, &ups) {
                            continue;
                        }
                        for (up, span) in ups {
                            let touches = |e: &PathEdge| e.from == up || enters(e.to, up);
                            let present = match up {
                                // An edge-complete circuit holds only edges: a component is in
                                // it when an edge leaves or enters it, and dropping it removes
                                // both kinds.
                                _ if circuit.edge_complete => {
                                    let present = state.path_edges.iter().any(touches);
                                    state.path_edges.retain(|e| !touches(e));
                                    present
                                }
                                Upstream::Head(h) => {
                                    state.qk_edges.retain(|e| e.head != h);
                                    state.heads.remove(&h).is_some()
                                }
                                Upstream::Mlp(l) => state.mlps.remove(&l).is_some(),
                                Upstream::Embed => false, // refused above: no edge-complete form
                            };
                            state.path_edges.retain(|e| e.from != up);
                            if !present {
                                self.error(
                                    SourceDiagnostic::warning(
                                        code::DROP_MISSING,
                                        format!(
                                            "`drop` has no effect: {} is not in the circuit at this point",
                                            up
                                        ),
                                    )
                                    .with_label(span, "not in the circuit")
                                    .with_help("`drop` removes what the base circuit or an earlier statement kept; check the name, or delete the statement"),
                                );
                            }
                        }
                    }
                }
                ast::StatementKind::Expect { .. } => {}
            }
        }
        // One report per `KEY -> QUERY` pair, however many heads the statement names.
        let mut checked = std::collections::HashSet::new();
        let mut checked_windows = std::collections::HashSet::new();
        for (edge, key_span, query_span) in own_edges {
            if checked_windows.insert((key_span.start, query_span.start, edge.head.layer)) {
                self.check_window(&edge, key_span.clone(), query_span.clone());
            }
            if checked.insert((key_span.start, query_span.start)) {
                self.check_key_order(&edge, key_span, query_span);
            }
        }
    }

    /// `embed` names a source only in an edge-complete circuit (elsewhere the embedding is
    /// always kept); reports it otherwise and says whether `ups` may be used.
    fn embed_allowed(&mut self, circuit: &ast::Circuit, ups: &[(Upstream, Span)]) -> bool {
        if circuit.edge_complete {
            return true;
        }
        let Some((_, span)) = ups.iter().find(|(u, _)| *u == Upstream::Embed) else {
            return true;
        };
        self.error(
            SourceDiagnostic::error(
                code::EMBED_OUTSIDE_EDGE_COMPLETE,
                format!(
                    "`embed` in the node-based circuit `{}`",
                    circuit.name.name
                ),
            )
            .with_label(span.clone(), "the embedding is always kept here")
            .with_help("only an edge-complete circuit (`edge-complete circuit NAME { ... }`) can ablate the embedding; in a node-based circuit every input reads it"),
        );
        false
    }

    /// A key after its query carries nothing under the causal mask. When that holds in every
    /// prompt whatever its tokens (the key's first position and the query's last share an anchor
    /// and the key's offset is larger), it is an error here; where it depends on the prompt, the
    /// plan checks it per prompt (`plan::edge_order`).
    fn check_key_order(&mut self, edge: &QkEdge, key_span: Span, query_span: Span) {
        let first_key = match &edge.keys {
            BItem::One(p) | BItem::Range(p, _) => p,
        };
        let last_query = match &edge.queries {
            BItem::One(p) | BItem::Range(_, p) => p,
        };
        if first_key.anchor == last_query.anchor && first_key.offset > last_query.offset {
            self.error(
                SourceDiagnostic::error(
                    code::KEY_AFTER_QUERY,
                    format!(
                        "this edge through {} carries nothing: its key `{}` comes after its query `{}` in every prompt",
                        edge.head,
                        &self.text[key_span.clone()],
                        &self.text[query_span.clone()]
                    ),
                )
                .with_label(key_span, "after the query")
                .with_label(query_span, "the query")
                .with_help("attention is causal: a query reads keys at or before itself; swap them (`edge HEAD: KEY -> QUERY`)"),
            );
        }
    }

    /// Under a sliding window of `w` keys (the head's layer's entry of the config's
    /// `attention_windows`) a query sees only its last `w` keys. When the edge's latest key is
    /// `w` or more tokens before its first query whatever the prompt's tokens (both offsets
    /// from one anchor), it carries nothing anywhere: an error here. Where that depends on the
    /// prompt, the plan checks it per prompt (`plan::check_windows`).
    fn check_window(&mut self, edge: &QkEdge, key_span: Span, query_span: Span) {
        let window = self
            .config
            .as_ref()
            .and_then(|c| c.attention_windows.get(edge.head.layer).copied().flatten());
        let Some(window) = window else {
            return;
        };
        let last_key = match &edge.keys {
            BItem::One(p) | BItem::Range(_, p) => p,
        };
        let first_query = match &edge.queries {
            BItem::One(p) | BItem::Range(p, _) => p,
        };
        if last_key.anchor == first_query.anchor
            && first_query.offset - last_key.offset >= window as i64
        {
            self.error(
                SourceDiagnostic::error(
                    code::KEY_OUTSIDE_WINDOW,
                    format!(
                        "this edge through {} reaches outside its sliding window: the key `{}` is {} tokens before the query `{}` in every prompt, and layer {} attends to the last {window} keys only",
                        edge.head,
                        &self.text[key_span.clone()],
                        first_query.offset - last_key.offset,
                        &self.text[query_span.clone()],
                        edge.head.layer,
                    ),
                )
                .with_label(key_span, "outside the window")
                .with_label(query_span, "the query")
                .with_help(format!("a query at token p sees the keys p−{}..=p (config.json `sliding_window` = {window}); name a key within the window", window - 1)),
            );
        }
    }

    fn expand_downstream(&mut self, to: &ast::Downstream) -> Vec<Downstream> {
        match to {
            ast::Downstream::Logits(_) => vec![Downstream::Logits],
            ast::Downstream::Mlp(sel, _) => self
                .expand_layers(sel)
                .into_iter()
                .map(Downstream::Mlp)
                .collect(),
            ast::Downstream::HeadInput { heads, input, .. } => {
                let input = match input {
                    ast::HeadInputKw::Q => HeadInput::Q,
                    ast::HeadInputKw::K => HeadInput::K,
                    ast::HeadInputKw::V => HeadInput::V,
                };
                self.expand_atom(heads)
                    .into_iter()
                    .map(|(h, _)| Downstream::Head(h, input))
                    .collect()
            }
        }
    }
}

/// Whether `to` is an input of component `up` (a head's q, k or v; an MLP's input).
fn enters(to: Downstream, up: Upstream) -> bool {
    match (to, up) {
        (Downstream::Head(h, _), Upstream::Head(u)) => h == u,
        (Downstream::Mlp(l), Upstream::Mlp(u)) => l == u,
        _ => false,
    }
}

/// The union of a head's kept positions with more positions.
fn union(existing: Option<&PositionSet>, more: &PositionSet) -> PositionSet {
    match (existing, more) {
        (Some(PositionSet::All), _) | (_, PositionSet::All) => PositionSet::All,
        (Some(PositionSet::Items(a)), PositionSet::Items(b)) => {
            let mut items = a.clone();
            for item in b {
                if !items.contains(item) {
                    items.push(item.clone());
                }
            }
            PositionSet::Items(items)
        }
        (None, set) => set.clone(),
    }
}
