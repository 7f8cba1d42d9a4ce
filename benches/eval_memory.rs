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
use circuit::resolve::bound::{AblationKind, EdgeAblation, HeadId, Scope};
use rand::{Rng, SeedableRng};

#[path = "../tests/eval_support/mod.rs"]
mod eval_support;
#[path = "support/random_gpt2.rs"]
mod random_gpt2;
use eval_support::FixedPositions;
use random_gpt2::{peak_rss_bytes, write_random_gpt2, Gpt2Shape};

const VOCAB: usize = 50_257;
const SEQ: usize = 8;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let shape = Gpt2Shape {
        layers: 1,
        heads: 2,
        d: 16,
        d_mlp: 32,
        vocab: VOCAB,
        n_ctx: 16,
    };
    write_random_gpt2(dir.path(), &shape);
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
    let mut circuit = eval_support::circuit("bench");
    circuit.heads.insert(
        HeadId { layer: 0, head: 0 },
        circuit::data::positions::PositionSet::All,
    );
    let before = peak_rss_bytes();
    let start = Instant::now();
    let mut evaluator = Evaluator::new(&model, settings, prompts, reference);
    let evaluation = evaluator.evaluate(&[&circuit]).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let peak = peak_rss_bytes();
    let gib = |b: f64| b / (1u64 << 30) as f64;
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
    if n >= 100_000 && peak >= (2u64 << 30) as f64 {
        eprintln!("eval_memory: peak RSS is over the 2 GB target");
        std::process::exit(1);
    }
}
