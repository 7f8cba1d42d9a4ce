//! Cost of `circuit eval` for one circuit on 64 prompts, against one plain forward pass of the
//! same prompts. The evaluation makes at most 4 passes (reference statistics, full model, empty
//! circuit, circuit); the ratio printed here is what that costs in wall time, hooks included.
//! Two reference sets, in the same run: 64 other prompts (the default `reference D.corrupt`),
//! and the evaluated prompts themselves (`reference D.clean`), where the reference pass also
//! gives the full model's logits (3 passes).
//!
//!     cargo bench --bench eval                       # stories260K and the random GPT-2 fixture
//!     cargo bench --bench eval -- --model DIR        # another model folder
//!
//! Prompts are seeded random token ids (24 tokens), so any model folder works.

use std::path::PathBuf;
use std::time::Instant;

use circuit::data::positions::{PositionItem, PositionSet};
use circuit::measure::{AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::{ForwardOptions, Model, NoInterventions};
use circuit::plan::PromptPositions;

#[path = "../tests/eval_support/fixed_positions.rs"]
mod fixed_positions;
use circuit::resolve::bound::{AblationKind, BoundCircuit, EdgeAblation, HeadId, QkEdge, Scope};
use fixed_positions::FixedPositions;
use rand::{Rng, SeedableRng};

const PROMPTS: usize = 64;
const SEQ: usize = 24;
const REPETITIONS: usize = 5;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn position(i: usize) -> circuit::data::positions::Position {
    circuit::data::positions::Position {
        anchor: circuit::data::positions::Anchor::Label {
            name: format!("P{i}"),
            token: circuit::data::positions::SlotToken::Last,
        },
        offset: 0,
    }
}

/// Every head of the first layer everywhere, half the heads of the others at the last three
/// positions, and QK edges into END for one head of the last layer.
fn circuit_for(model: &Model) -> BoundCircuit {
    let (layers, heads) = (model.config.n_layers, model.config.n_heads);
    let mut c = BoundCircuit {
        name: "bench".to_string(),
        edge_complete: false,
        heads: Default::default(),
        mlps: Default::default(),
        qk_edges: vec![],
        path_edges: vec![],
        expectations: vec![],
        span: 0..0,
    };
    for head in 0..heads {
        c.heads.insert(HeadId { layer: 0, head }, PositionSet::All);
    }
    for layer in 1..layers {
        for head in (0..heads).step_by(2) {
            let at = (SEQ - 3..SEQ)
                .map(|i| PositionItem::One(position(i)))
                .collect();
            c.heads
                .insert(HeadId { layer, head }, PositionSet::Items(at));
        }
    }
    let last = HeadId {
        layer: layers - 1,
        head: 0,
    };
    for key in [0, 3, SEQ / 2, SEQ - 1] {
        c.qk_edges.push(QkEdge {
            head: last,
            keys: PositionItem::One(position(key)),
            queries: PositionItem::One(position(SEQ - 1)),
            span: 0..0,
        });
    }
    c
}

fn bench(dir: &std::path::Path) {
    let model = Model::load(dir).expect("a model folder");
    let vocab = model.tokenizer.vocab_size().min(model.n_embedding_rows()) as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut prompt = || {
        (0..SEQ)
            .map(|_| rng.random_range(1..vocab))
            .collect::<Vec<u32>>()
    };
    let clean: Vec<Vec<u32>> = (0..PROMPTS).map(|_| prompt()).collect();
    let reference: Vec<Vec<u32>> = (0..PROMPTS).map(|_| prompt()).collect();
    let targets: Vec<Targets> = (0..PROMPTS)
        .map(|i| Targets {
            answer: (i as u32 % (vocab - 1)) + 1,
            distractor: (i as u32 * 7 % (vocab - 1)) + 1,
        })
        .collect();
    let positions: Vec<FixedPositions> = (0..PROMPTS)
        .map(|b| FixedPositions {
            len: SEQ,
            has_bos: false,
            labels: (0..SEQ).map(|i| (format!("P{i}"), i)).collect(),
            name: format!("prompt {b}"),
        })
        .collect();
    let circuit = circuit_for(&model);
    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope: Scope::HeadsAndMlps,
    };

    // The same circuit keeping every MLP everywhere: its own pass computes every MLP (the
    // bench's circuit keeps none, so under `ablate heads and mlps` its pass skips them all, as
    // the empty circuit's does).
    let mut with_mlps = circuit.clone();
    with_mlps.name = "bench with every MLP".to_string();
    for layer in 0..model.config.n_layers {
        with_mlps.mlps.insert(layer, PositionSet::All);
    }
    // One fresh evaluation of `circuit` over `reference`: its wall time and forward passes.
    let evaluate = |circuit: &BoundCircuit, reference: &[Vec<u32>]| {
        let started = Instant::now();
        let prompts = EvalPrompts {
            ids: clean.clone(),
            targets: targets.clone(),
            positions: positions
                .iter()
                .map(|p| Box::new(p.clone()) as Box<dyn PromptPositions>)
                .collect(),
        };
        let mut evaluator = Evaluator::new(&model, settings, prompts, reference.to_vec());
        let evaluation = evaluator.evaluate(&[circuit]).unwrap();
        std::hint::black_box(evaluation);
        (started.elapsed().as_secs_f64(), evaluator.forward_passes)
    };

    let mut forward_times = Vec::new();
    let (mut eval_times, mut clean_times, mut mlp_times) = (Vec::new(), Vec::new(), Vec::new());
    let (mut passes, mut clean_passes) = (0, 0);
    for _ in 0..REPETITIONS {
        let started = Instant::now();
        for chunk in clean.chunks(32) {
            let out = model
                .forward(chunk, &ForwardOptions::default(), &NoInterventions)
                .unwrap();
            std::hint::black_box(out.logits);
        }
        forward_times.push(started.elapsed().as_secs_f64());

        let (time, n) = evaluate(&circuit, &reference);
        eval_times.push(time);
        passes = n;
        let (time, n) = evaluate(&circuit, &clean);
        clean_times.push(time);
        clean_passes = n;
        mlp_times.push(evaluate(&with_mlps, &reference).0);
    }
    let (forward, eval, eval_clean, eval_mlps) = (
        median(forward_times),
        median(eval_times),
        median(clean_times),
        median(mlp_times),
    );
    println!(
        "{}: {} layers x {} heads, d_model {}; {PROMPTS} prompts x {SEQ} tokens",
        dir.display(),
        model.config.n_layers,
        model.config.n_heads,
        model.config.d_model
    );
    println!(
        "  plain forward {:.1} ms; circuit eval (one circuit) {:.1} ms = {:.2} x forward, {passes} forward passes",
        forward * 1e3,
        eval * 1e3,
        eval / forward
    );
    println!(
        "  reference = the evaluated prompts: {:.1} ms = {:.2} x forward, {clean_passes} forward passes",
        eval_clean * 1e3,
        eval_clean / forward
    );
    println!(
        "  the circuit keeping every MLP: {:.1} ms = {:.2} x forward",
        eval_mlps * 1e3,
        eval_mlps / forward
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = match args.iter().position(|a| a == "--model") {
        Some(i) => vec![PathBuf::from(&args[i + 1])],
        None => vec![
            root.join("../shared/models/stories260K"),
            root.join("tests/fixtures/models/gpt2-tiny"),
        ],
    };
    for dir in &models {
        bench(dir);
    }
}
