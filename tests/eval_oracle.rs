//! `circuit`'s evaluation against an oracle no one here wrote the forward pass of:
//! scripts/oracle_tl.py computes the same circuits with HuggingFace transformers (its own
//! attention recomputed in float64 with the ablation applied to z) and commits the numbers in
//! tests/fixtures/oracle/*.json. Node ablation and QK-edge (edge mean) ablation, on a random
//! GPT-2 and on stories260K (Llama, grouped-query attention, rotary); on both, path edges into
//! heads' q, k and v inputs, MLP inputs and the logits (the oracle rebuilds each such input from
//! the embedding, the biases and every upstream component's output or reference mean); on the
//! GPT-2, MLP node ablation with MLPs as path-edge sources under scope `heads_and_mlps`.

use std::collections::BTreeMap;
use std::path::Path;

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::measure::{mean, AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::{HeadInput, Model};
use circuit::plan::PromptPositions;

#[path = "eval_support/fixed_positions.rs"]
mod fixed_positions;
use circuit::resolve::bound::{
    AblationKind, BoundCircuit, Downstream, EdgeAblation, HeadId, Metric, PathEdge, QkEdge, Scope,
    Upstream,
};
use fixed_positions::FixedPositions;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

/// Token index `i` as a label `P{i}` (the fixtures name positions by index).
fn p(i: u64) -> Position {
    Position {
        anchor: Anchor::Label {
            name: format!("P{i}"),
            token: SlotToken::Last,
        },
        offset: 0,
    }
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn index(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// Token indices as a position set, or `"*"` as every position.
fn positions_from_json(v: &Value) -> PositionSet {
    if v == "*" {
        return PositionSet::All;
    }
    let items = v.as_array().unwrap().iter();
    PositionSet::Items(
        items
            .map(|x| PositionItem::One(p(x.as_u64().unwrap())))
            .collect(),
    )
}

/// `[L, H]` or `["mlp", L]`.
fn upstream_from_json(v: &Value) -> Upstream {
    match v[0].as_str() {
        Some("mlp") => Upstream::Mlp(index(&v[1])),
        _ => Upstream::Head(HeadId {
            layer: index(&v[0]),
            head: index(&v[1]),
        }),
    }
}

/// `[L, H, "q"|"k"|"v"]`, `["mlp", L]` or `["logits"]`.
fn downstream_from_json(v: &Value) -> Downstream {
    match v[0].as_str() {
        Some("mlp") => Downstream::Mlp(index(&v[1])),
        Some("logits") => Downstream::Logits,
        _ => {
            let which = match v[2].as_str().unwrap() {
                "q" => HeadInput::Q,
                "k" => HeadInput::K,
                "v" => HeadInput::V,
                other => panic!("unknown head input {other:?}"),
            };
            let head = HeadId {
                layer: index(&v[0]),
                head: index(&v[1]),
            };
            Downstream::Head(head, which)
        }
    }
}

fn circuit_from_json(c: &Value) -> BoundCircuit {
    let mut heads = BTreeMap::new();
    for h in c["heads"].as_array().unwrap() {
        let head = HeadId {
            layer: h[0].as_u64().unwrap() as usize,
            head: h[1].as_u64().unwrap() as usize,
        };
        let positions = h[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| PositionItem::One(p(x.as_u64().unwrap())));
        heads.insert(head, PositionSet::Items(positions.collect()));
    }
    let mut qk_edges = Vec::new();
    for e in c["qk_edges"].as_array().unwrap() {
        let head = HeadId {
            layer: e[0].as_u64().unwrap() as usize,
            head: e[1].as_u64().unwrap() as usize,
        };
        let query = e[2].as_u64().unwrap();
        for k in e[3].as_array().unwrap() {
            qk_edges.push(QkEdge {
                head,
                keys: PositionItem::One(p(k.as_u64().unwrap())),
                queries: PositionItem::One(p(query)),
                span: 0..0,
            });
        }
    }
    let no_items = Vec::new();
    let items = |key: &str| c.get(key).map_or(&no_items, |v| v.as_array().unwrap());
    let mlps = items("mlps")
        .iter()
        .map(|m| (index(&m[0]), positions_from_json(&m[1])))
        .collect();
    let path_edges = items("path_edges")
        .iter()
        .map(|e| PathEdge {
            from: upstream_from_json(&e["from"]),
            to: downstream_from_json(&e["to"]),
            positions: positions_from_json(&e["positions"]),
            span: 0..0,
        })
        .collect();
    BoundCircuit {
        name: c["name"].as_str().unwrap().to_string(),
        edge_complete: false,
        heads,
        mlps,
        qk_edges,
        path_edges,
        expectations: vec![],
        span: 0..0,
    }
}

fn check_fixture(name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join(format!("tests/fixtures/oracle/{name}.json"))).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(fixture["metric"], "logit_diff");
    assert_eq!(fixture["ablation"], "mean");
    let model = Model::load(&root.join(fixture["model"].as_str().unwrap())).unwrap();
    let clean = ids(&fixture["clean"]);
    let reference = ids(&fixture["reference"]);
    let targets: Vec<Targets> = fixture["answers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fixture["distractors"].as_array().unwrap())
        .map(|(a, d)| Targets {
            answer: a.as_u64().unwrap() as u32,
            distractor: d.as_u64().unwrap() as u32,
        })
        .collect();
    let positions: Vec<FixedPositions> = clean
        .iter()
        .enumerate()
        .map(|(b, prompt)| FixedPositions {
            len: prompt.len(),
            has_bos: false,
            labels: (0..prompt.len()).map(|i| (format!("P{i}"), i)).collect(),
            name: format!("prompt {b}"),
        })
        .collect();
    let circuits: Vec<BoundCircuit> = fixture["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(circuit_from_json)
        .collect();

    assert_eq!(fixture["edge_ablation"], "edge_mean");
    let scope = match fixture["scope"].as_str().unwrap() {
        "heads" => Scope::Heads,
        "heads_and_mlps" => Scope::HeadsAndMlps,
        other => panic!("unknown scope {other:?}"),
    };
    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope,
    };
    let prompts = EvalPrompts {
        ids: clean,
        targets,
        positions: positions
            .iter()
            .map(|p| Box::new(p.clone()) as Box<dyn PromptPositions>)
            .collect(),
    };
    let mut evaluator = Evaluator::new(&model, settings, prompts, reference);
    let refs: Vec<&BoundCircuit> = circuits.iter().collect();
    let evaluation = evaluator.evaluate(&refs).unwrap();

    let mut worst = 0f64;
    for c in fixture["circuits"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let expected = &c["expected"];
        let scores = evaluation.scores(name, Metric::LogitDiff).unwrap();
        let got = [
            ("full", scores.full),
            ("circuit", scores.circuit),
            ("empty", scores.empty),
            ("faithfulness", scores.faithfulness.unwrap()),
        ];
        for (key, value) in got {
            let want = expected[key].as_f64().unwrap();
            let diff = (value - want).abs();
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "{name}: {key} is {value}, the oracle says {want} (Δ {diff})"
            );
        }
        let per_prompt = &evaluation.circuit(name).unwrap()[&Metric::LogitDiff];
        for (i, (value, want)) in per_prompt
            .iter()
            .zip(expected["per_prompt_circuit"].as_array().unwrap())
            .enumerate()
        {
            let diff = (value - want.as_f64().unwrap()).abs();
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "{name}, prompt {i}: {value} vs the oracle's {want} (Δ {diff})"
            );
        }
        // Not a vacuous comparison: the circuit is neither the full model nor the empty one.
        assert!(
            (scores.circuit - scores.full).abs() > 1e-3
                && (scores.circuit - scores.empty).abs() > 1e-3
        );
        assert!(mean(&evaluation.full[&Metric::LogitDiff]).is_finite());
        // Nor is it vacuous for path edges: leaving them out gives another number.
        if let Some(without) = expected.get("circuit_without_path_edges") {
            assert!((scores.circuit - without.as_f64().unwrap()).abs() > 1e-3);
        }
    }
    eprintln!("{name}: max |Δ| against the oracle {worst:.2e}");
}

#[test]
fn gpt2_tiny_matches_the_transformers_oracle() {
    check_fixture("gpt2_tiny");
}

#[test]
fn gpt2_tiny_mlp_scope_and_mlp_path_edges_match_the_transformers_oracle() {
    check_fixture("gpt2_tiny_mlps");
}

#[test]
fn stories260k_matches_the_transformers_oracle() {
    check_fixture("stories260k");
}
