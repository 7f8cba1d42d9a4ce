//! `circuit`'s evaluation against an oracle no one here wrote the forward pass of:
//! scripts/oracle_tl.py computes the same circuits with HuggingFace transformers (its own
//! attention recomputed in float64 with the ablation applied to z) and commits the numbers in
//! tests/fixtures/oracle/*.json. Node ablation and QK-edge (edge mean) ablation, on a random
//! GPT-2 and on stories260K (Llama, grouped-query attention, rotary).

use std::collections::BTreeMap;
use std::path::Path;

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::measure::{mean, AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::Model;
use circuit::plan::{FixedPositions, PromptPositions};
use circuit::resolve::bound::{
    AblationKind, BoundCircuit, EdgeAblation, HeadId, Metric, QkEdge, Scope,
};
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
    BoundCircuit {
        name: c["name"].as_str().unwrap().to_string(),
        heads,
        mlps: BTreeMap::new(),
        qk_edges,
        path_edges: vec![],
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

    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope: Scope::Heads,
    };
    let prompts = EvalPrompts {
        ids: clean,
        targets,
        positions: positions
            .iter()
            .map(|p| p as &dyn PromptPositions)
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
    }
    eprintln!("{name}: max |Δ| against the oracle {worst:.2e}");
}

#[test]
fn gpt2_tiny_matches_the_transformers_oracle() {
    check_fixture("gpt2_tiny");
}

#[test]
fn stories260k_matches_the_transformers_oracle() {
    check_fixture("stories260k");
}
