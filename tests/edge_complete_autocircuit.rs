//! Edge-complete circuits against auto-circuit itself (docs/semantics.md, section 7):
//! scripts/autocircuit_reference.py evaluates circuits given as sets of auto-circuit edges
//! (`Resid Start->A0.1.V`, `A0.1->MLP 1`, `MLP 1->Resid End`) with its token-wise mean ablation
//! over the corrupt prompts, on the committed random GPT-2 (tests/fixtures/models/gpt2-tiny), and
//! commits the per-prompt logit differences in tests/fixtures/autocircuit/gpt2_tiny.json. Here
//! the same edges are an edge-complete circuit under `ablate heads and mlps by mean` with the
//! corrupt prompts as the reference, and every prompt's logit difference must agree within 1e-4.
//!
//! The script needs auto-circuit 1.0.1 and TransformerLens < 3 beside the torch of /tmp/venv:
//! `python3 -m venv /tmp/venv-ac`, a `.pth` file in its site-packages naming
//! /tmp/venv/lib/python3.11/site-packages, then `pip install --no-deps auto-circuit==1.0.1
//! 'transformer-lens<3' better-abc plotly narwhals attrs blobfile lxml`.

use std::path::Path;

use circuit::data::positions::PositionSet;
use circuit::measure::{AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::{HeadInput, Model};
use circuit::plan::PromptPositions;
use circuit::resolve::bound::{
    AblationKind, BoundCircuit, Downstream, EdgeAblation, HeadId, Metric, PathEdge, Scope, Upstream,
};
use serde_json::Value;

#[path = "eval_support/fixed_positions.rs"]
mod fixed_positions;
use fixed_positions::FixedPositions;

const TOLERANCE: f64 = 1e-4;

/// `A1.2` as a head.
fn head(name: &str) -> HeadId {
    let (layer, head) = name
        .strip_prefix('A')
        .and_then(|rest| rest.split_once('.'))
        .unwrap_or_else(|| panic!("not an auto-circuit head: {name:?}"));
    HeadId {
        layer: layer.parse().unwrap(),
        head: head.parse().unwrap(),
    }
}

/// An auto-circuit source node: `Resid Start`, `A1.2`, `MLP 0`.
fn source(name: &str) -> Upstream {
    match name {
        "Resid Start" => Upstream::Embed,
        _ => match name.strip_prefix("MLP ") {
            Some(layer) => Upstream::Mlp(layer.parse().unwrap()),
            None => Upstream::Head(head(name)),
        },
    }
}

/// An auto-circuit destination node: `Resid End`, `A1.2.Q`, `MLP 0`.
fn destination(name: &str) -> Downstream {
    if name == "Resid End" {
        return Downstream::Logits;
    }
    if let Some(layer) = name.strip_prefix("MLP ") {
        return Downstream::Mlp(layer.parse().unwrap());
    }
    let (h, which) = name.rsplit_once('.').unwrap();
    let which = match which {
        "Q" => HeadInput::Q,
        "K" => HeadInput::K,
        "V" => HeadInput::V,
        other => panic!("unknown head input {other:?}"),
    };
    Downstream::Head(head(h), which)
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    let prompts = v.as_array().unwrap().iter();
    prompts
        .map(|p| {
            let tokens = p.as_array().unwrap().iter();
            tokens.map(|x| x.as_u64().unwrap() as u32).collect()
        })
        .collect()
}

fn edge_complete(name: &str, edges: &[Value]) -> BoundCircuit {
    let path_edges = edges
        .iter()
        .map(|e| {
            let (from, to) = e.as_str().unwrap().split_once("->").unwrap();
            PathEdge {
                from: source(from),
                to: destination(to),
                positions: PositionSet::All,
                span: 0..0,
            }
        })
        .collect();
    BoundCircuit {
        name: name.to_string(),
        edge_complete: true,
        heads: Default::default(),
        mlps: Default::default(),
        qk_edges: vec![],
        path_edges,
        expectations: vec![],
        span: 0..0,
    }
}

#[test]
fn edge_complete_circuits_match_auto_circuit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("tests/fixtures/autocircuit/gpt2_tiny.json"))
        .expect("the fixture of scripts/autocircuit_reference.py");
    let fixture: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(fixture["ablation"], "tokenwise_mean_corrupt");
    assert_eq!(fixture["metric"], "logit_diff");
    let model = Model::load(&root.join(fixture["model"].as_str().unwrap())).unwrap();
    let clean = ids(&fixture["clean"]);
    let corrupt = ids(&fixture["corrupt"]);
    let answers = fixture["answers"].as_array().unwrap();
    let wrong = fixture["wrong_answers"].as_array().unwrap();
    let targets = answers
        .iter()
        .zip(wrong)
        .map(|(a, w)| Targets {
            answer: a.as_u64().unwrap() as u32,
            distractor: w.as_u64().unwrap() as u32,
        })
        .collect();
    let positions = clean.iter().enumerate().map(|(b, prompt)| {
        Box::new(FixedPositions {
            len: prompt.len(),
            has_bos: false,
            labels: Default::default(),
            name: format!("prompt {b}"),
        }) as Box<dyn PromptPositions>
    });
    let prompts = EvalPrompts {
        ids: clean.clone(),
        targets,
        positions: positions.collect(),
    };
    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope: Scope::HeadsAndMlps,
    };
    let circuits: Vec<BoundCircuit> = fixture["circuits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| edge_complete(c["name"].as_str().unwrap(), c["edges"].as_array().unwrap()))
        .collect();
    // Every edge of the model: the fixture's count is the graph's.
    let n_layers = model.config.n_layers;
    let n_heads = model.config.n_heads;
    let every = circuits.iter().find(|c| c.name == "every_edge").unwrap();
    let n_sources_before = |d: Downstream| {
        let sources = (0..n_layers).flat_map(|layer| {
            (0..n_heads)
                .map(move |head| Upstream::Head(HeadId { layer, head }))
                .chain([Upstream::Mlp(layer)])
        });
        let model_residual = model.config.residual;
        1 + sources.filter(|&u| d.reads(u, model_residual)).count()
    };
    let n_edges: usize = circuit::plan::PlanShape {
        n_layers,
        n_heads,
        residual: model.config.residual,
    }
    .downstream_inputs()
    .into_iter()
    .map(n_sources_before)
    .sum();
    assert_eq!(every.path_edges.len(), n_edges);
    assert_eq!(fixture["n_edges"].as_u64().unwrap() as usize, n_edges);

    let mut evaluator = Evaluator::new(&model, settings, prompts, corrupt);
    let refs: Vec<&BoundCircuit> = circuits.iter().collect();
    let evaluation = evaluator.evaluate(&refs).unwrap();

    let mut worst = 0f64;
    let full = &evaluation.full[&Metric::LogitDiff];
    for (i, (got, want)) in full
        .iter()
        .zip(fixture["full_per_prompt"].as_array().unwrap())
        .enumerate()
    {
        let diff = (got - want.as_f64().unwrap()).abs();
        worst = worst.max(diff);
        assert!(diff <= TOLERANCE, "full model, prompt {i}: {got} vs {want}");
    }
    let mut means = Vec::new();
    for c in fixture["circuits"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let got = &evaluation.circuit(name).unwrap()[&Metric::LogitDiff];
        let want: Vec<f64> = c["per_prompt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let diff = (g - w).abs();
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "{name}, prompt {i}: {g} here, auto-circuit says {w} (Δ {diff:.2e})"
            );
        }
        means.push((name, want.iter().sum::<f64>() / want.len() as f64));
    }
    // Not vacuous: the circuits give different numbers, and only keeping every edge is the
    // full model.
    for (i, (a, ma)) in means.iter().enumerate() {
        for (b, mb) in &means[i + 1..] {
            assert!((ma - mb).abs() > 1e-3, "{a} and {b} agree: {ma} vs {mb}");
        }
    }
    eprintln!("max |Δ| against auto-circuit: {worst:.2e}");
}
