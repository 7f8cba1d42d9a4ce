//! Peak memory of `eval` over many prompts with a large vocabulary (issue 11.12): metrics are
//! computed batch by batch and the full model's END logits are kept only within
//! `Evaluator::full_logits_budget`, so memory must not grow as prompts × vocabulary.
//!
//!     cargo bench --bench eval_memory                  # 100,000 prompts, 50,257-token vocabulary
//!     cargo bench --bench eval_memory -- 10000         # another prompt count
//!
//! The model is a 1-layer GPT-2 with random weights and GPT-2's vocabulary size (written to a
//! temporary folder), so the cost is dominated by the `(batch, vocabulary)` logits and their
//! metrics, as in a real 50k-vocabulary run. Prints the wall time and the process's peak
//! resident memory (VmHWM); the target is under 2 GB at 100,000 prompts.

use std::time::Instant;

use circuit::measure::{AblationSettings, EvalPrompts, Evaluator, Targets};
use circuit::model::Model;
use circuit::plan::PromptPositions;
use circuit::resolve::bound::{AblationKind, BoundCircuit, EdgeAblation, HeadId, Scope};
use rand::{Rng, SeedableRng};

#[path = "../tests/eval_support/fixed_positions.rs"]
mod fixed_positions;
use fixed_positions::FixedPositions;

const VOCAB: usize = 50_257;
const D: usize = 16;
const SEQ: usize = 8;

/// Writes a random 1-layer GPT-2 of GPT-2's vocabulary size into `dir`.
fn write_model(dir: &std::path::Path) {
    let config = serde_json::json!({
        "model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": D, "n_inner": 2 * D,
        "n_positions": 16, "vocab_size": VOCAB, "layer_norm_epsilon": 1e-5,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tokenizer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/gpt2-tiny/tokenizer.json"
    );
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let shapes: Vec<(String, Vec<usize>)> = [
        ("wte.weight", vec![VOCAB, D]),
        ("wpe.weight", vec![16, D]),
        ("h.0.ln_1.weight", vec![D]),
        ("h.0.ln_1.bias", vec![D]),
        ("h.0.attn.c_attn.weight", vec![D, 3 * D]),
        ("h.0.attn.c_attn.bias", vec![3 * D]),
        ("h.0.attn.c_proj.weight", vec![D, D]),
        ("h.0.attn.c_proj.bias", vec![D]),
        ("h.0.ln_2.weight", vec![D]),
        ("h.0.ln_2.bias", vec![D]),
        ("h.0.mlp.c_fc.weight", vec![D, 2 * D]),
        ("h.0.mlp.c_fc.bias", vec![2 * D]),
        ("h.0.mlp.c_proj.weight", vec![2 * D, D]),
        ("h.0.mlp.c_proj.bias", vec![D]),
        ("ln_f.weight", vec![D]),
        ("ln_f.bias", vec![D]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let norm_weight = name.ends_with("ln_1.weight")
                || name.ends_with("ln_2.weight")
                || name == "ln_f.weight";
            (0..n)
                .flat_map(|_| {
                    let x: f32 = if norm_weight {
                        1.0
                    } else {
                        rng.random_range(-0.2..0.2)
                    };
                    x.to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes);
            (name.clone(), view.unwrap())
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path());
    let model = Model::load(dir.path()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let prompt = |rng: &mut rand_chacha::ChaCha8Rng| {
        (0..SEQ)
            .map(|_| rng.random_range(1..300))
            .collect::<Vec<u32>>()
    };
    let ids: Vec<Vec<u32>> = (0..n).map(|_| prompt(&mut rng)).collect();
    let reference: Vec<Vec<u32>> = (0..n.min(1000)).map(|_| prompt(&mut rng)).collect();
    let targets = (0..n)
        .map(|_| Targets {
            answer: rng.random_range(1..VOCAB as u32),
            distractor: rng.random_range(1..VOCAB as u32),
        })
        .collect();
    let positions = (0..n)
        .map(|b| {
            Box::new(FixedPositions {
                len: SEQ,
                has_bos: false,
                labels: Default::default(),
                name: format!("prompt {b}"),
            }) as Box<dyn PromptPositions>
        })
        .collect();
    let prompts = EvalPrompts {
        ids,
        targets,
        positions,
    };
    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope: Scope::HeadsAndMlps,
    };
    let mut circuit = BoundCircuit {
        name: "bench".to_string(),
        heads: Default::default(),
        mlps: Default::default(),
        qk_edges: vec![],
        path_edges: vec![],
        expectations: vec![],
        span: 0..0,
    };
    circuit.heads.insert(
        HeadId { layer: 0, head: 0 },
        circuit::data::positions::PositionSet::All,
    );
    let before = peak_rss().unwrap_or(0);
    let start = Instant::now();
    let mut evaluator = Evaluator::new(&model, settings, prompts, reference);
    let evaluation = evaluator.evaluate(&[&circuit]).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let peak = peak_rss().unwrap_or(0);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "eval_memory: {n} prompts, vocabulary {VOCAB}: {seconds:.1} s, {} forward passes, \
         peak RSS {:.3} GiB (after loading {:.3} GiB); faithfulness {:?}",
        evaluator.forward_passes,
        gib(peak),
        gib(before),
        evaluation
            .scores("bench", circuit::resolve::bound::Metric::LogitDiff)
            .and_then(|s| s.faithfulness)
    );
    if n >= 100_000 && peak >= 2 << 30 {
        eprintln!("eval_memory: peak RSS is over the 2 GB target");
        std::process::exit(1);
    }
}
