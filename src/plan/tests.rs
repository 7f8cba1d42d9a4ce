use super::*;
use fixed::FixedPositions;

/// The test fixture shared with the integration tests (a file outside the library's sources).
mod fixed {
    use crate as circuit;
    include!("../../tests/eval_support/fixed_positions.rs");
}
use crate::data::positions::{Anchor, Position, SlotToken};
use crate::model::HeadInput;
use crate::resolve::bound::{PathEdge, QkEdge};

fn label(name: &str, offset: i64) -> Position {
    Position {
        anchor: Anchor::Label {
            name: name.to_string(),
            token: SlotToken::Last,
        },
        offset,
    }
}

fn end(offset: i64) -> Position {
    Position {
        anchor: Anchor::End,
        offset,
    }
}

fn set(positions: &[Position]) -> PositionSet {
    PositionSet::Items(positions.iter().cloned().map(PositionItem::One).collect())
}

/// Two prompts of different lengths with S1, S2 at different token indices.
fn prompts() -> Vec<FixedPositions> {
    vec![
        FixedPositions {
            len: 5,
            has_bos: true,
            labels: [("S1".to_string(), 1), ("S2".to_string(), 3)].into(),
            name: "prompt 0".to_string(),
        },
        FixedPositions {
            len: 7,
            has_bos: true,
            labels: [("S1".to_string(), 2), ("S2".to_string(), 4)].into(),
            name: "prompt 1".to_string(),
        },
    ]
}

fn circuit() -> BoundCircuit {
    BoundCircuit {
        name: "c".to_string(),
        edge_complete: false,
        heads: BTreeMap::new(),
        mlps: BTreeMap::new(),
        qk_edges: vec![],
        path_edges: vec![],
        expectations: vec![],
        span: 0..0,
    }
}

const SHAPE: PlanShape = PlanShape {
    n_layers: 2,
    n_heads: 3,
    residual: ResidualTopology::Sequential,
};

fn compile_for(circuit: &BoundCircuit, scope: Scope) -> miette::Result<Plan> {
    let prompts = prompts();
    let refs: Vec<&dyn PromptPositions> = prompts.iter().map(|p| p as _).collect();
    compile(circuit, scope, SHAPE, &refs)
}

fn h(layer: usize, head: usize) -> HeadId {
    HeadId { layer, head }
}

#[test]
fn empty_circuit_ablates_every_real_position_and_leaves_padding() {
    let plan = compile_for(&circuit(), Scope::HeadsAndMlps).unwrap();
    assert_eq!(plan, Plan::empty(SHAPE, &[5, 7], Scope::HeadsAndMlps));
    let mask = &plan.head_keep[1];
    assert_eq!(mask.shape(), &[2, 7, 3]);
    assert!(!mask[[0, 4, 2]]);
    assert!(mask[[0, 5, 0]], "padding of the short prompt is left alone");
    assert!(!plan.mlp_keep[0][[1, 6]]);
    assert!(!plan.is_identity());
    assert!(Plan::full(SHAPE, &[5, 7], Scope::Heads).is_identity());
}

#[test]
fn heads_scope_never_ablates_mlps() {
    let plan = compile_for(&circuit(), Scope::Heads).unwrap();
    assert!(plan.mlp_keep.iter().all(|m| m.iter().all(|&k| k)));
}

#[test]
fn head_positions_resolve_per_prompt() {
    let mut c = circuit();
    c.heads.insert(h(0, 1), set(&[label("S1", 1), end(0)]));
    c.heads.insert(h(1, 2), PositionSet::All);
    let plan = compile_for(&c, Scope::Heads).unwrap();
    let kept = |layer: usize, b: usize, head: usize| -> Vec<usize> {
        (0..plan.prompt_lens[b])
            .filter(|&t| plan.head_keep[layer][[b, t, head]])
            .collect()
    };
    assert_eq!(kept(0, 0, 1), vec![2, 4]);
    assert_eq!(kept(0, 1, 1), vec![3, 6]);
    assert_eq!(kept(0, 0, 0), Vec::<usize>::new());
    assert_eq!(kept(1, 1, 2), (0..7).collect::<Vec<_>>());
}

#[test]
fn qk_edges_keep_the_union_of_keys_at_their_queries() {
    let mut c = circuit();
    c.heads.insert(h(1, 0), set(&[end(0)]));
    c.qk_edges.push(QkEdge {
        head: h(1, 0),
        keys: PositionItem::One(label("S1", 0)),
        queries: PositionItem::One(end(0)),
        span: 0..0,
    });
    c.qk_edges.push(QkEdge {
        head: h(1, 0),
        keys: PositionItem::Range(label("S2", 0), end(0)),
        queries: PositionItem::One(end(0)),
        span: 0..0,
    });
    let plan = compile_for(&c, Scope::Heads).unwrap();
    assert_eq!(
        plan.qk_queries[1],
        vec![
            QkQuery {
                prompt: 0,
                query: 4,
                head: 0,
                keys: vec![1, 3, 4]
            },
            QkQuery {
                prompt: 1,
                query: 6,
                head: 0,
                keys: vec![2, 4, 5, 6]
            },
        ]
    );
    assert!(plan.qk_queries[0].is_empty());
    assert_eq!(plan.edge_heads(), [h(1, 0)].into());
}

/// An edge implies its node: `edge h: K -> Q` alone keeps h at Q (reading K only); a node
/// statement beside it keeps h at its own positions with every key.
#[test]
fn an_edge_keeps_its_head_at_its_queries() {
    let mut c = circuit();
    c.qk_edges.push(QkEdge {
        head: h(1, 0),
        keys: PositionItem::One(label("S1", 0)),
        queries: PositionItem::One(end(0)),
        span: 0..0,
    });
    let plan = compile_for(&c, Scope::Heads).unwrap();
    let kept = |b: usize| -> Vec<usize> {
        (0..plan.prompt_lens[b])
            .filter(|&t| plan.head_keep[1][[b, t, 0]])
            .collect()
    };
    assert_eq!(kept(0), vec![4], "only at END of prompt 0");
    assert_eq!(kept(1), vec![6], "only at END of prompt 1");
    assert_eq!(plan.qk_queries[1].len(), 2);
    assert_eq!(plan.qk_queries[1][0].keys, vec![1], "END reads S1 only");

    // Beside a node at S2, the head is kept at S2 with every key, and at END with S1 only.
    c.heads.insert(h(1, 0), set(&[label("S2", 0)]));
    let plan = compile_for(&c, Scope::Heads).unwrap();
    assert!(plan.head_keep[1][[0, 3, 0]] && plan.head_keep[1][[0, 4, 0]]);
    assert_eq!(
        plan.qk_queries[1]
            .iter()
            .map(|q| (q.prompt, q.query))
            .collect::<Vec<_>>(),
        vec![(0, 4), (1, 6)],
        "only the edge's queries restrict keys"
    );
}

#[test]
fn keys_after_the_query_are_dropped() {
    let mut c = circuit();
    c.heads.insert(h(0, 0), set(&[label("S1", 0)]));
    c.qk_edges.push(QkEdge {
        head: h(0, 0),
        keys: PositionItem::One(end(0)),
        queries: PositionItem::One(label("S1", 0)),
        span: 0..0,
    });
    let plan = compile_for(&c, Scope::Heads).unwrap();
    assert_eq!(plan.qk_queries[0].len(), 2);
    assert!(plan.qk_queries[0].iter().all(|q| q.keys.is_empty()));
}

#[test]
fn mlp_positions_under_heads_and_mlps() {
    let mut c = circuit();
    c.mlps.insert(1, set(&[label("S2", 0)]));
    let plan = compile_for(&c, Scope::HeadsAndMlps).unwrap();
    assert!(plan.mlp_keep[1][[0, 3]]);
    assert!(plan.mlp_keep[1][[1, 4]]);
    assert!(!plan.mlp_keep[1][[1, 3]]);
    assert!(!plan.mlp_keep[0][[1, 4]]);
}

#[test]
fn position_outside_a_prompt_names_the_prompt() {
    let mut c = circuit();
    c.heads.insert(h(0, 0), set(&[label("S2", 2)]));
    let err = compile_for(&c, Scope::Heads).unwrap_err();
    let text = format!("{err}");
    assert!(text.contains("prompt 0"), "{text}");
}

#[test]
fn components_outside_the_model_are_errors() {
    let mut c = circuit();
    c.heads.insert(h(2, 0), PositionSet::All);
    let err = compile_for(&c, Scope::Heads).unwrap_err();
    assert!(format!("{err}").contains("head 2.0"), "{err}");

    let mut c = circuit();
    c.path_edges.push(PathEdge {
        from: Upstream::Head(h(1, 0)),
        to: Downstream::Head(h(1, 1), HeadInput::Q),
        positions: PositionSet::All,
        span: 0..0,
    });
    let err = compile_for(&c, Scope::Heads).unwrap_err();
    assert!(format!("{err}").contains("1.0 -> 1.1.q"), "{err}");
}

#[test]
fn path_edges_mark_kept_upstream_per_position() {
    let mut c = circuit();
    c.path_edges.push(PathEdge {
        from: Upstream::Head(h(0, 2)),
        to: Downstream::Head(h(1, 1), HeadInput::V),
        positions: set(&[end(0)]),
        span: 0..0,
    });
    c.path_edges.push(PathEdge {
        from: Upstream::Mlp(0),
        to: Downstream::Logits,
        positions: PositionSet::All,
        span: 0..0,
    });
    let plan = compile_for(&c, Scope::HeadsAndMlps).unwrap();
    assert_eq!(plan.path_inputs.len(), 2);
    let into_v = &plan.path_inputs[&Downstream::Head(h(1, 1), HeadInput::V)];
    let u = SHAPE.upstream_index(Upstream::Head(h(0, 2)));
    assert!(into_v[[0, 4, u]] && into_v[[1, 6, u]]);
    assert!(!into_v[[0, 3, u]] && !into_v[[0, 4, 0]]);
    assert!(into_v[[0, 6, 0]], "padding untouched");
    let into_logits = &plan.path_inputs[&Downstream::Logits];
    let mlp0 = SHAPE.upstream_index(Upstream::Mlp(0));
    assert!((0..5).all(|t| into_logits[[0, t, mlp0]]));
    assert!(plan.has_path_edges());
}

#[test]
fn an_edge_complete_circuit_rebuilds_every_input_and_ablates_no_node() {
    let mut c = circuit();
    c.edge_complete = true;
    c.path_edges.push(PathEdge {
        from: Upstream::Embed,
        to: Downstream::Head(h(1, 2), HeadInput::Q),
        positions: set(&[end(0)]),
        span: 0..0,
    });
    c.path_edges.push(PathEdge {
        from: Upstream::Head(h(0, 1)),
        to: Downstream::Logits,
        positions: PositionSet::All,
        span: 0..0,
    });
    let plan = compile_for(&c, Scope::HeadsAndMlps).unwrap();
    // Every head's q, k and v, every MLP, the logits.
    assert_eq!(plan.path_inputs.len(), 2 * 3 * 3 + 2 + 1);
    assert!(plan.head_keep.iter().all(|m| m.iter().all(|&k| k)));
    assert!(plan.mlp_keep.iter().all(|m| m.iter().all(|&k| k)));
    let embed = SHAPE.upstream_index(Upstream::Embed);
    let into_q = &plan.path_inputs[&Downstream::Head(h(1, 2), HeadInput::Q)];
    // Prompt 0 has 5 tokens (END = 4), prompt 1 has 7 (END = 6).
    assert!(into_q[[0, 4, embed]] && into_q[[1, 6, embed]]);
    assert!(!into_q[[0, 3, embed]] && !into_q[[1, 5, embed]]);
    assert!((0..SHAPE.n_upstream()).all(|u| u == embed || !into_q[[0, 4, u]]));
    // An input no edge enters reads reference values only: nothing kept at a real position.
    let into_mlp = &plan.path_inputs[&Downstream::Mlp(1)];
    assert!((0..5).all(|t| (0..SHAPE.n_upstream()).all(|u| !into_mlp[[0, t, u]])));
    assert!(into_mlp[[0, 6, 0]], "padding untouched");
    let into_logits = &plan.path_inputs[&Downstream::Logits];
    let head = SHAPE.upstream_index(Upstream::Head(h(0, 1)));
    assert!((0..7).all(|t| into_logits[[1, t, head]] && !into_logits[[1, t, embed]]));

    // Outside the edge-complete form the embedding is always kept.
    c.edge_complete = false;
    c.path_edges.remove(0);
    let plan = compile_for(&c, Scope::HeadsAndMlps).unwrap();
    assert_eq!(plan.path_inputs.len(), 1);
    let into_logits = &plan.path_inputs[&Downstream::Logits];
    assert!((0..7).all(|t| into_logits[[1, t, embed]]));
}

#[test]
fn equal_plans_have_equal_keys_and_different_plans_differ() {
    let mut a = circuit();
    a.heads
        .insert(h(0, 1), set(&[label("S1", 0), label("S2", 0)]));
    let mut b = circuit();
    b.name = "b".to_string();
    b.heads.insert(
        h(0, 1),
        PositionSet::Items(vec![
            PositionItem::One(label("S2", 0)),
            PositionItem::One(label("S1", 0)),
        ]),
    );
    let pa = compile_for(&a, Scope::Heads).unwrap();
    let pb = compile_for(&b, Scope::Heads).unwrap();
    assert_eq!(pa, pb);
    assert_eq!(pa.content_key(), pb.content_key());
    let empty = compile_for(&circuit(), Scope::Heads).unwrap();
    assert_ne!(pa.content_key(), empty.content_key());
}

/// A key after its query in every prompt is an error; in some prompts, a note naming them.
#[test]
fn keys_after_the_query_in_every_prompt_are_an_error_and_in_some_a_note() {
    let positions = prompts();
    let refs: Vec<&dyn PromptPositions> = positions.iter().map(|p| p as _).collect();
    let with_edge = |keys: PositionItem, queries: PositionItem| {
        let mut c = circuit();
        c.qk_edges.push(QkEdge {
            head: h(0, 0),
            keys,
            queries,
            span: 0..0,
        });
        c
    };
    // END is after S1 in both prompts.
    let never = with_edge(PositionItem::One(end(0)), PositionItem::One(label("S1", 0)));
    let err = check_key_order(&never, &refs).unwrap_err();
    assert!(err.to_string().contains("every evaluated prompt"), "{err}");
    // END-1 is S2 (3) in prompt 0, and after S2 (5 > 4) in prompt 1.
    let sometimes = with_edge(
        PositionItem::One(end(-1)),
        PositionItem::One(label("S2", 0)),
    );
    let notes = check_key_order(&sometimes, &refs).unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].contains("1 of 2 prompts"), "{}", notes[0]);
    let fine = with_edge(PositionItem::every_token(), PositionItem::One(end(0)));
    assert!(check_key_order(&fine, &refs).unwrap().is_empty());
}
