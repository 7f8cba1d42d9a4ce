//! Weights kept in their stored dtype (`--weights stored`, src/model/stored.rs) give the same
//! numbers as f32 weights, bit for bit: every BF16/F16 fixture of tests/fixtures/models, its
//! logits at every position of a padded batch, its END logits, its activation cache and its
//! gradients, at 1 and 2 threads; and the memory estimate follows the mode.

mod cli_support;

use std::path::{Path, PathBuf};

use circuit::model::backward::{gradients, GradientOptions, Objective};
use circuit::model::{ForwardOptions, Model, NoInterventions, WeightsMode};
use cli_support::{command, stderr};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// Every fixture stored as BF16 or F16 (the F32 ones have nothing to keep stored).
const HALF_FIXTURES: [&str; 7] = [
    "gpt2-f16",
    "llama-gqa-bf16",
    "mistral-head-dim-bf16",
    "neox-parallel-f16",
    "neox-sequential-bf16",
    "qwen2-layer-types-bf16",
    "qwen2-window-f16",
];

fn on_threads<T: Send>(threads: usize, run: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(run)
}

/// Prompts of different lengths (a padded batch), within every fixture's vocabulary.
fn prompts(model: &Model) -> Vec<Vec<u32>> {
    let vocab = model.n_embedding_rows() as u32;
    vec![
        (0..9).map(|i| (i * 37 + 5) % vocab).collect(),
        (0..4).map(|i| (i * 11 + 2) % vocab).collect(),
        vec![1 % vocab],
    ]
}

/// Logits at every position with the cache, END logits, and gradients of `logit_diff`, as
/// plain vectors to compare.
fn everything(model: &Model) -> Vec<Vec<f32>> {
    let tokens = prompts(model);
    let all = model
        .forward(
            &tokens,
            &ForwardOptions {
                all_logits: true,
                cache: true,
            },
            &NoInterventions,
        )
        .unwrap();
    let end = model
        .forward(&tokens, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    let cache = all.cache.as_ref().unwrap();
    let mut out = vec![
        all.logits.iter().copied().collect(),
        end.logits.iter().copied().collect(),
        cache.embed.iter().copied().collect(),
        cache.resid_final.iter().copied().collect(),
    ];
    for layer in &cache.layers {
        out.push(layer.resid_pre.iter().copied().collect());
        out.push(layer.z.iter().copied().collect());
        out.push(layer.head_out.iter().copied().collect());
        out.push(layer.mlp_out.iter().copied().collect());
    }
    let targets = vec![(1, 2); tokens.len()];
    let grads = gradients(
        model,
        &tokens,
        &targets,
        Objective::from_metric_name("logit_diff", None).unwrap(),
        GradientOptions {
            head_inputs: true,
            ..Default::default()
        },
    )
    .unwrap();
    out.push(grads.resid_final.iter().copied().collect());
    for layer in &grads.layers {
        out.push(layer.z.iter().copied().collect());
        out.push(layer.mlp_in.iter().copied().collect());
        let inputs = layer.head_inputs.as_ref().unwrap();
        out.push(format!("{inputs:?}").bytes().map(f32::from).collect());
    }
    out
}

#[test]
fn stored_dtype_weights_give_the_f32_numbers_bit_for_bit() {
    for name in HALF_FIXTURES {
        let f32_model = Model::load_with(&fixture(name), WeightsMode::F32).unwrap();
        let stored = Model::load_with(&fixture(name), WeightsMode::Stored).unwrap();
        assert!(!f32_model.weights_are_stored(), "{name}");
        assert!(
            stored.weights_are_stored(),
            "{name}: kept in its stored dtype"
        );
        // Every matrix, GPT-NeoX's q, k and v regrouped from its fused matrix included.
        assert_eq!(
            stored.matrices_held_as_f32(),
            0,
            "{name}: matrices left as f32"
        );
        assert!(f32_model.matrices_held_as_f32() > 0, "{name}");
        let expected = on_threads(2, || everything(&f32_model));
        for threads in [1, 2] {
            let got = on_threads(threads, || everything(&stored));
            assert_eq!(got.len(), expected.len());
            for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
                assert!(got == expected, "{name}, output {i}, {threads} thread(s)");
            }
        }
    }
}

#[test]
fn an_f32_file_loads_as_f32_whatever_the_mode() {
    let model = Model::load_with(&fixture("qwen2-tied-f32"), WeightsMode::Stored).unwrap();
    assert!(!model.weights_are_stored());
}

/// `circuit run` on `model` with `--weights MODE` and a faked available memory.
fn run(model: &Path, mode: &str, available: &str) -> std::process::Output {
    command(&[
        "run",
        "--weights",
        mode,
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "ab",
    ])
    .env("CIRCUIT_MEMORY_AVAILABLE", available)
    .output()
    .expect("the circuit binary runs")
}

#[test]
fn the_memory_estimate_follows_the_weights_mode_and_auto_picks_what_fits() {
    // llama-gqa-bf16: its estimate is 0.32 MiB with f32 weights, 0.19 MiB with stored ones.
    let model = fixture("llama-gqa-bf16");
    let words = |out: &std::process::Output| {
        let err = stderr(out);
        err.split_whitespace()
            .filter(|w| *w != "│")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let f32_refused = run(&model, "f32", "256K");
    assert_eq!(
        f32_refused.status.code(),
        Some(2),
        "{}",
        stderr(&f32_refused)
    );
    assert!(
        words(&f32_refused).contains("memory with f32 weights, but 0.25 MiB"),
        "{}",
        stderr(&f32_refused)
    );
    let stored = run(&model, "stored", "256K");
    assert!(stored.status.success(), "{}", stderr(&stored));
    let auto = run(&model, "auto", "256K");
    assert!(auto.status.success(), "{}", stderr(&auto));
    // Same output as f32 weights with room for them.
    let f32_ok = run(&model, "f32", "");
    assert!(f32_ok.status.success(), "{}", stderr(&f32_ok));
    assert_eq!(stored.stdout, f32_ok.stdout);
    assert_eq!(auto.stdout, f32_ok.stdout);
    // Too little even for stored weights: refused, saying so.
    let too_little = run(&model, "auto", "100K");
    assert_eq!(too_little.status.code(), Some(2));
    assert!(
        words(&too_little).contains("memory with stored-dtype weights"),
        "{}",
        stderr(&too_little)
    );
}
