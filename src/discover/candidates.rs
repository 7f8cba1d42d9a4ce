//! The search space of a discovery: one candidate per head × query slot, MLP × slot, or QK edge
//! key slot → query slot, each with the score it is ranked by, and the `.circuit` positions its
//! slots are written as.
//!
//! Scores name tokens by slot (`S1+1`, `END`, `start+2`: docs/semantics.md, "Alignment by
//! label"); a circuit names them by position. A slot anchored at a label is written as that
//! position (`S1+1`); `start+k` (tokens before the first label) is written `BOS+k` when the
//! tokenizer adds BOS, else from a label that sits at the same index in every prompt (`S1-3`).
//! Every written position is checked on every evaluated prompt: where the prompt has the slot,
//! the position must name exactly its token. A slot that fails is not searched (and said so).

use std::collections::{BTreeMap, BTreeSet};

use crate::attribute::inputs::slot_names;
use crate::attribute::{Component, Entry};
use crate::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use crate::data::slots::{prompt_slots, END_LABEL};
use crate::data::TokenizedPrompt;
use crate::model::Model;
use crate::plan::Plan;
use crate::resolve::bound::{single, BoundCircuit, Downstream, HeadId, PathEdge, QkEdge, Upstream};

/// One component a discovered circuit may keep.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// A head or an MLP (a QK edge is a head with a `key`).
    pub component: Component,
    /// The query slot (an MLP's position).
    pub query: String,
    /// The key slot of a QK edge.
    pub key: Option<String>,
    /// The score it is ranked by; `None` when the ranking gives this kind of component no score
    /// (MLPs under `attention` or `qkvo`): such candidates are in every prefix.
    pub score: Option<f64>,
}

impl Candidate {
    /// From a score entry.
    pub fn scored(entry: &Entry) -> Candidate {
        Candidate {
            component: entry.component,
            query: entry.query.clone(),
            key: entry.key.clone(),
            score: Some(entry.score),
        }
    }

    /// How a `.circuit` file writes it, with slots as written positions.
    pub fn circuit_text(&self, positions: &SlotPositions) -> String {
        let q = positions.text(&self.query);
        match (&self.component, &self.key) {
            (Component::Head(h), Some(key)) => format!("edge {h}: {} -> {q}", positions.text(key)),
            (Component::Path { from, to }, _) => format!("edge {from} -> {to} @ {q}"),
            (c, _) => format!("{} @ {q}", c.name()),
        }
    }

    /// The layer of the component; of a path edge, the layer of the input it enters (the
    /// logits: after the last layer, `n_layers`).
    pub fn layer(&self, n_layers: usize) -> usize {
        match self.component {
            Component::Head(h) => h.layer,
            Component::Mlp(l) => l,
            Component::Path { to, .. } => match to {
                Downstream::Head(h, _) => h.layer,
                Downstream::Mlp(l) => l,
                Downstream::Logits => n_layers,
            },
        }
    }
}

/// Upstream components in forward order: `embed`, then per layer its heads, then its MLP.
pub fn upstream_rank(u: Upstream) -> (usize, usize, usize) {
    match u {
        Upstream::Embed => (0, 0, 0),
        Upstream::Head(h) => (1 + h.layer, 0, h.head),
        Upstream::Mlp(l) => (1 + l, 1, 0),
    }
}

/// Downstream inputs in forward order: per layer each head's q, k, v, then the MLP; the logits
/// last (layer `n_layers`).
pub fn downstream_rank(d: Downstream, n_layers: usize) -> (usize, usize, usize) {
    match d {
        Downstream::Head(h, input) => (h.layer, 0, h.head * 3 + input as usize),
        Downstream::Mlp(l) => (l, 1, 0),
        Downstream::Logits => (n_layers, 1, 0),
    }
}

/// Every path edge of the model at every slot of `order` (the edge-complete form's edges:
/// `embed` among the sources), unscored.
pub fn path_edge_candidates(model: &Model, mlps: bool, order: &[String]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (from, to) in crate::attribute::path_edges(model, mlps, true) {
        out.extend(order.iter().map(|slot| Candidate {
            component: Component::Path { from, to },
            query: slot.clone(),
            key: None,
            score: None,
        }));
    }
    out
}

/// The written position of every slot that can be written, and why the others cannot.
#[derive(Clone, Debug, Default)]
pub struct SlotPositions {
    pub positions: BTreeMap<String, Position>,
    /// Slots that cannot be written, with the reason.
    pub unwritable: BTreeMap<String, String>,
    /// Slot order: by first token, prompt by prompt (the score set's order).
    pub order: Vec<String>,
}

impl SlotPositions {
    /// Finds and checks a written position for every slot of `order` on `prompts`.
    pub fn new(order: &[String], prompts: &[TokenizedPrompt]) -> SlotPositions {
        let slot_names = token_slots(prompts);
        let mut out = SlotPositions {
            order: order.to_vec(),
            ..Default::default()
        };
        for slot in order {
            let checked = written_position(slot, prompts)
                .and_then(|p| check_position(slot, &p, prompts, &slot_names).map(|()| p));
            match checked {
                Ok(p) => {
                    out.positions.insert(slot.clone(), p);
                }
                Err(why) => {
                    out.unwritable.insert(slot.clone(), why);
                }
            }
        }
        out
    }

    /// The position as a `.circuit` file writes it (`S1+1`, `END`, `S1-3`).
    pub fn text(&self, slot: &str) -> String {
        self.positions[slot].display_name()
    }

    /// Index of a slot in token order (for sorting positions in a statement).
    pub fn rank(&self, slot: &str) -> usize {
        self.order
            .iter()
            .position(|s| s == slot)
            .unwrap_or(usize::MAX)
    }

    pub fn writable(&self, slot: &str) -> bool {
        self.positions.contains_key(slot)
    }
}

/// The slot name of every token of every prompt, `(B, T_b)`, as the scores name them.
pub fn token_slots(prompts: &[TokenizedPrompt]) -> Vec<Vec<String>> {
    prompts
        .iter()
        .map(|p| slot_names(&prompt_slots(p).slots))
        .collect()
}

/// `NAME`, `NAME+k`, `start`, `start+k` → (anchor, offset).
fn parse_slot(slot: &str) -> (&str, i64) {
    match slot.split_once('+') {
        Some((anchor, k)) => (anchor, k.parse().unwrap_or(0)),
        None => (slot, 0),
    }
}

fn written_position(slot: &str, prompts: &[TokenizedPrompt]) -> Result<Position, String> {
    let (anchor, offset) = parse_slot(slot);
    if anchor == END_LABEL {
        return Ok(Position {
            anchor: Anchor::End,
            offset,
        });
    }
    if anchor != "start" {
        return Ok(Position {
            anchor: Anchor::Label {
                name: anchor.to_string(),
                token: SlotToken::Last,
            },
            offset,
        });
    }
    // `start+k` is token k of every prompt.
    if prompts.iter().all(|p| p.has_bos) {
        return Ok(Position {
            anchor: Anchor::Bos,
            offset,
        });
    }
    // The label with the smallest index among those at one index in every prompt.
    let first = prompts.first().ok_or("the dataset has no prompt")?;
    let fixed = first
        .slots
        .iter()
        .filter(|(name, tokens)| {
            prompts
                .iter()
                .all(|p| p.slots.get(*name).map(|s| s.last) == Some(tokens.last))
        })
        .min_by_key(|(name, tokens)| (tokens.last, (*name).clone()));
    match fixed {
        Some((name, tokens)) => Ok(Position {
            anchor: Anchor::Label {
                name: name.clone(),
                token: SlotToken::Last,
            },
            offset: offset - tokens.last as i64,
        }),
        None => Err("the tokenizer adds no BOS and no label sits at the same token in every prompt, so the tokens before the first label have no name".to_string()),
    }
}

/// Where a prompt has `slot`, `position` must name exactly that token; in every prompt it must
/// name a token of the prompt.
fn check_position(
    slot: &str,
    position: &Position,
    prompts: &[TokenizedPrompt],
    slot_names: &[Vec<String>],
) -> Result<(), String> {
    let set = single(position.clone());
    for (prompt, names) in prompts.iter().zip(slot_names) {
        let tokens = prompt
            .resolve(&set)
            .map_err(|e| format!("`{}` in {}: {e}", position.display_name(), prompt.id()))?;
        let expected: BTreeSet<usize> = names
            .iter()
            .enumerate()
            .filter(|(_, n)| *n == slot)
            .map(|(t, _)| t)
            .collect();
        if let Some(&t) = tokens.iter().find(|&&t| t >= prompt.len()) {
            return Err(format!(
                "`{}` is token {t} of {}, which has {} tokens",
                position.display_name(),
                prompt.id(),
                prompt.len()
            ));
        }
        if !expected.is_empty() && tokens != expected {
            return Err(format!(
                "`{}` names token(s) {tokens:?} of {} but the slot is token(s) {expected:?}",
                position.display_name(),
                prompt.id()
            ));
        }
    }
    Ok(())
}

/// The circuit keeping exactly `kept` (indices into `candidates`), named `name`. Positions of
/// one component are listed in token order. Path-edge candidates make an edge-complete
/// circuit (even when none of them is kept: then every input reads reference values).
pub fn circuit_of(
    name: &str,
    candidates: &[Candidate],
    kept: &BTreeSet<usize>,
    positions: &SlotPositions,
) -> BoundCircuit {
    let mut heads: BTreeMap<HeadId, Vec<&str>> = BTreeMap::new();
    let mut mlps: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    let mut edges: Vec<(HeadId, &str, &str)> = Vec::new();
    let mut paths: BTreeMap<(Downstream, Upstream), Vec<&str>> = BTreeMap::new();
    for &i in kept {
        let c = &candidates[i];
        match (&c.component, &c.key) {
            (Component::Head(h), Some(key)) => edges.push((*h, key, &c.query)),
            (Component::Head(h), None) => heads.entry(*h).or_default().push(&c.query),
            (Component::Mlp(l), _) => mlps.entry(*l).or_default().push(&c.query),
            (Component::Path { from, to }, _) => {
                paths.entry((*to, *from)).or_default().push(&c.query)
            }
        }
    }
    let edge_complete = candidates
        .iter()
        .any(|c| matches!(c.component, Component::Path { .. }));
    let set = |slots: Vec<&str>| {
        let mut slots = slots;
        slots.sort_by_key(|s| positions.rank(s));
        slots.dedup();
        PositionSet::Items(
            slots
                .iter()
                .map(|s| PositionItem::One(positions.positions[*s].clone()))
                .collect(),
        )
    };
    edges.sort_by_key(|(h, k, q)| (*h, positions.rank(q), positions.rank(k)));
    BoundCircuit {
        name: name.to_string(),
        heads: heads.into_iter().map(|(h, s)| (h, set(s))).collect(),
        mlps: mlps.into_iter().map(|(l, s)| (l, set(s))).collect(),
        qk_edges: edges
            .into_iter()
            .map(|(head, k, q)| QkEdge {
                head,
                keys: PositionItem::One(positions.positions[k].clone()),
                queries: PositionItem::One(positions.positions[q].clone()),
                span: 0..0,
            })
            .collect(),
        path_edges: paths
            .into_iter()
            .map(|((to, from), slots)| PathEdge {
                from,
                to,
                positions: set(slots),
                span: 0..0,
            })
            .collect(),
        edge_complete,
        expectations: Vec::new(),
        span: 0..0,
    }
}

/// Whether a compiled circuit keeps a candidate on every token of its slot(s): the test for
/// "inside the base circuit". `slots[b][t]` is token `t`'s slot in prompt `b`.
pub fn inside(candidate: &Candidate, plan: &Plan, slots: &[Vec<String>]) -> bool {
    let tokens = |b: usize, slot: &str| -> Vec<usize> {
        slots[b]
            .iter()
            .enumerate()
            .filter(|(_, s)| *s == slot)
            .map(|(t, _)| t)
            .collect()
    };
    (0..slots.len()).all(|b| {
        let queries = tokens(b, &candidate.query);
        match (&candidate.component, &candidate.key) {
            (Component::Mlp(l), _) => queries.iter().all(|&t| plan.mlp_keep[*l][[b, t]]),
            (Component::Head(h), key) => queries.iter().all(|&q| {
                if !plan.head_keep[h.layer][[b, q, h.head]] {
                    return false;
                }
                let Some(key) = key else { return true };
                // Edges of the head into this query restrict its keys; none: every key.
                let listed = plan.qk_queries[h.layer]
                    .iter()
                    .find(|e| e.prompt == b && e.query == q && e.head == h.head);
                match listed {
                    None => true,
                    Some(e) => tokens(b, key)
                        .iter()
                        .filter(|&&k| k <= q)
                        .all(|k| e.keys.contains(k)),
                }
            }),
            (Component::Path { from, to }, _) => {
                // An input no edge enters reads only reference values.
                let Some(mask) = plan.path_inputs.get(to) else {
                    return false;
                };
                let u = plan.shape.upstream_index(*from);
                queries.iter().all(|&t| mask[[b, t, u]])
            }
        }
    })
}
