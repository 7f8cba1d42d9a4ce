//! Edge-complete circuits against auto-circuit itself (docs/semantics.md, section 8):
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

use std::collections::BTreeSet;
use std::path::Path;

use circuit::data::positions::PositionSet;
use circuit::exchange::{circuit_text, read_graph};
use circuit::measure::{AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::{HeadInput, Model};
use circuit::plan::PromptPositions;
use circuit::resolve::bound::{
    AblationKind, BoundCircuit, Downstream, EdgeAblation, HeadId, Metric, PathEdge, Scope, Upstream,
};
use circuit::resolve::{resolve_source, RealEnvironment, ResolveOptions};
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

/// The fixture, its model, and an evaluator of its clean prompts with the corrupt prompts as
/// the reference under token-wise mean ablation (`ablate heads and mlps by mean`).
struct Fixture {
    json: Value,
    model: Model,
}

impl Fixture {
    fn load() -> Fixture {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("tests/fixtures/autocircuit/gpt2_tiny.json"))
            .expect("the fixture of scripts/autocircuit_reference.py");
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["ablation"], "tokenwise_mean_corrupt");
        assert_eq!(json["metric"], "logit_diff");
        let model = Model::load(&root.join(json["model"].as_str().unwrap())).unwrap();
        Fixture { json, model }
    }

    fn evaluator(&self) -> Evaluator<'_> {
        let clean = ids(&self.json["clean"]);
        let answers = self.json["answers"].as_array().unwrap();
        let wrong = self.json["wrong_answers"].as_array().unwrap();
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
        Evaluator::new(&self.model, settings, prompts, ids(&self.json["corrupt"]))
    }

    /// auto-circuit's per-prompt logit differences of the circuit `name`.
    fn expected(&self, name: &str) -> Vec<f64> {
        let circuits = self.json["circuits"].as_array().unwrap();
        let circuit = circuits.iter().find(|c| c["name"] == name).unwrap();
        let values = circuit["per_prompt"].as_array().unwrap();
        values.iter().map(|x| x.as_f64().unwrap()).collect()
    }
}

#[test]
fn edge_complete_circuits_match_auto_circuit() {
    let loaded = Fixture::load();
    let (fixture, model) = (&loaded.json, &loaded.model);
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

    let mut evaluator = loaded.evaluator();
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
        let want = loaded.expected(name);
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

/// The graph the script wrote (its `random_half` circuit in EAP-IG names), imported as
/// `circuit import` does, resolved as a `.circuit` text and evaluated: auto-circuit's numbers.
#[test]
fn an_imported_eap_ig_graph_evaluates_as_auto_circuit_does() {
    let loaded = Fixture::load();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph_file = "tests/fixtures/autocircuit/gpt2_tiny_random_half_graph.json";
    let graph_text = std::fs::read_to_string(root.join(graph_file)).unwrap();
    let graph = read_graph(graph_file, &graph_text, &loaded.model.config).unwrap();
    let circuits = loaded.json["circuits"].as_array().unwrap();
    let random_half = circuits
        .iter()
        .find(|c| c["name"] == "random_half")
        .unwrap();
    assert_eq!(
        graph.kept.len(),
        random_half["edges"].as_array().unwrap().len()
    );
    assert_eq!(
        graph.n_edges,
        loaded.json["n_edges"].as_u64().unwrap() as usize
    );

    let model_dir = loaded.json["model"].as_str().unwrap();
    let text = circuit_text(
        &graph,
        "graph.json",
        model_dir,
        "seqcont.numerals",
        "random_half",
    );
    let options = ResolveOptions::default();
    let resolved = resolve_source("imported.circuit", &text, root, &RealEnvironment, &options)
        .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    assert_eq!(resolved.file.settings.scope, Scope::HeadsAndMlps);
    let bound = &resolved.file.circuits[0];
    assert!(bound.edge_complete);
    // The same edges as auto-circuit's circuit.
    let imported: BTreeSet<(Upstream, Downstream)> =
        bound.path_edges.iter().map(|e| (e.from, e.to)).collect();
    let theirs = edge_complete("random_half", random_half["edges"].as_array().unwrap());
    let theirs: BTreeSet<(Upstream, Downstream)> =
        theirs.path_edges.iter().map(|e| (e.from, e.to)).collect();
    assert_eq!(imported, theirs);

    let evaluation = loaded.evaluator().evaluate(&[bound]).unwrap();
    let got = &evaluation.circuit("random_half").unwrap()[&Metric::LogitDiff];
    for (i, (g, w)) in got.iter().zip(loaded.expected("random_half")).enumerate() {
        assert!(
            (g - w).abs() <= TOLERANCE,
            "prompt {i}: {g} here, auto-circuit says {w}"
        );
    }
}
