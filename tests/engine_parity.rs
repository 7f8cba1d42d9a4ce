//! The engine against HuggingFace transformers: fixtures written by scripts/make_reference.py
//! (random GPT-2 in F32 and F16, random GQA Llama in BF16, random GPT-NeoX in both wirings in
//! F16 and BF16, random Qwen2 with tied embeddings in F32, random Mistral with an explicit head_dim in BF16,
//! random Mistral and Qwen2 with binding sliding windows (every layer; from `max_window_layers`;
//! from `layer_types`) in F32, F16 and BF16,
//! the real stories260K), compared to 1e-4 in the logits, plus HF's hidden states
//! and eager attention patterns for the cache, and HF's greedy generation.

use std::path::{Path, PathBuf};

use circuit::model::{ForwardOptions, Model, NoInterventions, ResidualTopology};
use ndarray::{s, ArrayD, ArrayViewD, IxDyn};
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn stories_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K")
}

/// The HF outputs of one fixture folder.
struct Expected {
    prompts: Vec<String>,
    ids: Vec<Vec<u32>>,
    logits: Vec<ArrayD<f32>>, // per prompt (T, V)
    hidden: Vec<ArrayD<f32>>, // per prompt (L+1, T, D)
    attn: Vec<ArrayD<f32>>,   // per prompt (L, H, T, T)
    meta: serde_json::Value,
}

fn expected(name: &str) -> Expected {
    let dir = fixture_dir(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let prompts: Vec<String> = meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let f32_tensor = |key: String| {
        let view = tensors.tensor(&key).unwrap();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        ArrayD::from_shape_vec(IxDyn(view.shape()), values).unwrap()
    };
    let mut e = Expected {
        prompts: prompts.clone(),
        ids: vec![],
        logits: vec![],
        hidden: vec![],
        attn: vec![],
        meta,
    };
    for i in 0..prompts.len() {
        let ids = tensors.tensor(&format!("prompt{i}.ids")).unwrap();
        e.ids.push(
            ids.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect(),
        );
        e.logits.push(f32_tensor(format!("prompt{i}.logits")));
        e.hidden.push(f32_tensor(format!("prompt{i}.hidden")));
        e.attn.push(f32_tensor(format!("prompt{i}.attn")));
    }
    e
}

/// Asserts max |got − want| ≤ `tolerance`; on failure prints the first differing values and the
/// max difference (as llm.c's test_gpt2 does).
fn assert_close(label: &str, got: ArrayViewD<f32>, want: ArrayViewD<f32>, tolerance: f32) {
    assert_eq!(got.shape(), want.shape(), "{label}: shapes differ");
    let mut max_diff = 0.0f32;
    let mut first_bad = Vec::new();
    for (index, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let diff = (g - w).abs();
        if (diff.is_nan() || diff > tolerance) && first_bad.len() < 5 {
            first_bad.push(format!("  flat index {index}: got {g}, expected {w}"));
        }
        if diff > max_diff || diff.is_nan() {
            max_diff = if diff.is_nan() { f32::NAN } else { diff };
        }
    }
    if !first_bad.is_empty() || max_diff.is_nan() {
        panic!(
            "{label}: max |Δ| = {max_diff:e} > {tolerance:e}; first differing values:\n{}",
            first_bad.join("\n")
        );
    }
    eprintln!("{label}: max |Δ| = {max_diff:e}");
}

/// Tokenization, all-position logits per prompt, END logits, and the batch of all prompts.
fn check_logits(model: &Model, name: &str, e: &Expected) {
    for (i, prompt) in e.prompts.iter().enumerate() {
        let ids = model.encode_prompt(prompt).unwrap();
        assert_eq!(ids, e.ids[i], "{name}: tokenization of {prompt:?}");
        let all = ForwardOptions {
            all_logits: true,
            cache: false,
        };
        let out = model
            .forward(std::slice::from_ref(&ids), &all, &NoInterventions)
            .unwrap();
        assert_close(
            &format!("{name} prompt {i} all-position logits"),
            out.logits.slice(s![0, .., ..]).into_dyn(),
            e.logits[i].view(),
            TOLERANCE,
        );
        let end = model
            .forward(&[ids], &ForwardOptions::default(), &NoInterventions)
            .unwrap();
        let last = e.logits[i].shape()[0] - 1;
        assert_close(
            &format!("{name} prompt {i} END logits"),
            end.logits.slice(s![0, 0, ..]).into_dyn(),
            e.logits[i].slice(s![last, ..]).into_dyn(),
            TOLERANCE,
        );
    }
    // All prompts in one right-padded batch: the same numbers at every real position.
    let batch = model
        .forward(
            &e.ids,
            &ForwardOptions {
                all_logits: true,
                cache: false,
            },
            &NoInterventions,
        )
        .unwrap();
    for (i, ids) in e.ids.iter().enumerate() {
        assert_eq!(batch.lengths[i], ids.len());
        assert_close(
            &format!("{name} prompt {i} in a batch"),
            batch.logits.slice(s![i, ..ids.len(), ..]).into_dyn(),
            e.logits[i].view(),
            TOLERANCE,
        );
    }
    // END logits of the padded batch: each prompt's own last row (the engine computes the last
    // layer at those rows alone here).
    let end = model
        .forward(&e.ids, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    for (i, ids) in e.ids.iter().enumerate() {
        assert_close(
            &format!("{name} prompt {i} END logits in a batch"),
            end.logits.slice(s![i, 0, ..]).into_dyn(),
            e.logits[i].slice(s![ids.len() - 1, ..]).into_dyn(),
            TOLERANCE,
        );
    }
}

/// The cache against HF: `hidden_states[0]` is the embedding, `hidden_states[l+1]` the residual
/// after layer `l` (the last one after the final norm, so not compared), `attentions[l]` the
/// pattern.
fn check_cache(model: &Model, name: &str, e: &Expected) {
    let options = ForwardOptions {
        all_logits: false,
        cache: true,
    };
    let out = model.forward(&e.ids, &options, &NoInterventions).unwrap();
    let cache = out.cache.unwrap();
    let n_layers = model.config.n_layers;
    assert_eq!(cache.layers.len(), n_layers);
    for (i, ids) in e.ids.iter().enumerate() {
        let t = ids.len();
        assert_close(
            &format!("{name} prompt {i} embed"),
            cache.embed.slice(s![i, ..t, ..]).into_dyn(),
            e.hidden[i].slice(s![0, .., ..]).into_dyn(),
            TOLERANCE,
        );
        for layer in 0..n_layers {
            if layer + 1 < n_layers {
                assert_close(
                    &format!("{name} prompt {i} resid_post layer {layer}"),
                    cache.layers[layer]
                        .resid_post
                        .slice(s![i, ..t, ..])
                        .into_dyn(),
                    e.hidden[i].slice(s![layer + 1, .., ..]).into_dyn(),
                    TOLERANCE,
                );
            }
            assert_close(
                &format!("{name} prompt {i} pattern layer {layer}"),
                cache.layers[layer]
                    .pattern
                    .slice(s![i, .., ..t, ..t])
                    .into_dyn(),
                e.attn[i].slice(s![layer, .., .., ..]).into_dyn(),
                1e-5,
            );
        }
    }
}

#[test]
fn gpt2_tiny_f32_matches_transformers() {
    let model = Model::load(&fixture_dir("gpt2-tiny")).unwrap();
    assert_eq!((model.config.n_layers, model.config.n_heads), (3, 5));
    assert_eq!((model.config.d_model, model.config.d_mlp), (80, 160));
    let e = expected("gpt2-tiny");
    check_logits(&model, "gpt2-tiny", &e);
    check_cache(&model, "gpt2-tiny", &e);
}

#[test]
fn gpt2_f16_with_padded_embedding_matches_transformers() {
    let model = Model::load(&fixture_dir("gpt2-f16")).unwrap();
    // The embedding (300 rows) is larger than the tokenizer (280 ids): allowed.
    assert!(model.tokenizer.vocab_size() < model.n_embedding_rows());
    let e = expected("gpt2-f16");
    check_logits(&model, "gpt2-f16", &e);
    check_cache(&model, "gpt2-f16", &e);
}

#[test]
fn llama_gqa_bf16_matches_transformers() {
    let model = Model::load(&fixture_dir("llama-gqa-bf16")).unwrap();
    assert_eq!((model.config.n_heads, model.config.n_kv_heads), (6, 2));
    assert_eq!(model.config.rope_theta, 500.0);
    let e = expected("llama-gqa-bf16");
    check_logits(&model, "llama-gqa-bf16", &e);
    check_cache(&model, "llama-gqa-bf16", &e);
}

/// The ids HF's greedy `generate` appended to `greedy_prompt` (random models: ids, not text).
fn check_greedy(model: &Model, name: &str, e: &Expected) {
    let prompt = model
        .encode_prompt(e.meta["greedy_prompt"].as_str().unwrap())
        .unwrap();
    let want: Vec<u32> = e.meta["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect();
    let generated = model.generate_greedy(&prompt, want.len()).unwrap();
    assert_eq!(generated[prompt.len()..], want[..], "{name}: greedy ids");
}

#[test]
fn gpt_neox_parallel_f16_matches_transformers() {
    let model = Model::load(&fixture_dir("neox-parallel-f16")).unwrap();
    let config = &model.config;
    assert_eq!(config.residual, ResidualTopology::Parallel);
    // transformers 5's spelling: rope_parameters {rope_theta: 2000, partial_rotary_factor: 0.25}.
    assert_eq!(
        (config.rope_theta, config.d_head, config.rotary_dim),
        (2000.0, 16, 4)
    );
    assert!(config.attention_bias);
    let e = expected("neox-parallel-f16");
    check_logits(&model, "neox-parallel-f16", &e);
    check_cache(&model, "neox-parallel-f16", &e);
    check_greedy(&model, "neox-parallel-f16", &e);
}

#[test]
fn gpt_neox_sequential_bf16_with_the_old_config_spelling_matches_transformers() {
    let model = Model::load(&fixture_dir("neox-sequential-bf16")).unwrap();
    let config = &model.config;
    assert_eq!(config.residual, ResidualTopology::Sequential);
    // transformers 4's spelling: rotary_emb_base 500, rotary_pct 0.5.
    assert_eq!(
        (config.rope_theta, config.d_head, config.rotary_dim),
        (500.0, 16, 8)
    );
    assert!(!config.attention_bias);
    let e = expected("neox-sequential-bf16");
    check_logits(&model, "neox-sequential-bf16", &e);
    check_cache(&model, "neox-sequential-bf16", &e);
    check_greedy(&model, "neox-sequential-bf16", &e);
}

#[test]
fn qwen2_tied_f32_matches_transformers() {
    let model = Model::load(&fixture_dir("qwen2-tied-f32")).unwrap();
    let config = &model.config;
    assert_eq!(
        (config.n_heads, config.n_kv_heads, config.d_head),
        (4, 2, 12)
    );
    assert_eq!(config.rope_theta, 300.0);
    assert!(config.tie_word_embeddings && config.attention_bias);
    let e = expected("qwen2-tied-f32");
    check_logits(&model, "qwen2-tied-f32", &e);
    check_cache(&model, "qwen2-tied-f32", &e);
    check_greedy(&model, "qwen2-tied-f32", &e);
}

#[test]
fn mistral_with_explicit_head_dim_bf16_matches_transformers() {
    let model = Model::load(&fixture_dir("mistral-head-dim-bf16")).unwrap();
    let config = &model.config;
    // head_dim 16, not hidden_size / heads = 12.
    assert_eq!(
        (config.n_heads, config.n_kv_heads, config.d_head),
        (4, 1, 16)
    );
    assert!(!config.attention_bias && !config.tie_word_embeddings);
    let e = expected("mistral-head-dim-bf16");
    check_logits(&model, "mistral-head-dim-bf16", &e);
    check_cache(&model, "mistral-head-dim-bf16", &e);
    check_greedy(&model, "mistral-head-dim-bf16", &e);
}

/// The keys HF's patterns give weight to at the longest prompt's last query, per layer: the
/// fixture's window binds where the test says it does (a window that never binds would test
/// nothing).
fn attended_keys_at_the_end(e: &Expected, prompt: usize) -> Vec<usize> {
    let attn = &e.attn[prompt]; // (L, H, T, T)
    let (layers, last) = (attn.shape()[0], attn.shape()[2] - 1);
    (0..layers)
        .map(|l| {
            (0..=last)
                .filter(|&k| attn[[l, 0, last, k].as_slice()] > 0.0)
                .count()
        })
        .collect()
}

#[test]
fn mistral_with_a_binding_sliding_window_f32_matches_transformers() {
    let model = Model::load(&fixture_dir("mistral-window-f32")).unwrap();
    assert_eq!(model.config.attention_windows, vec![Some(3); 3]);
    let e = expected("mistral-window-f32");
    assert_eq!(attended_keys_at_the_end(&e, 3), [3, 3, 3]);
    check_logits(&model, "mistral-window-f32", &e);
    check_cache(&model, "mistral-window-f32", &e);
    check_greedy(&model, "mistral-window-f32", &e);
}

#[test]
fn qwen2_sliding_window_from_max_window_layers_f16_matches_transformers() {
    let model = Model::load(&fixture_dir("qwen2-window-f16")).unwrap();
    // use_sliding_window, sliding_window 4, max_window_layers 1, no layer_types.
    assert_eq!(model.config.attention_windows, vec![None, Some(4), Some(4)]);
    let e = expected("qwen2-window-f16");
    let full = e.ids[3].len();
    assert_eq!(attended_keys_at_the_end(&e, 3), [full, 4, 4]);
    check_logits(&model, "qwen2-window-f16", &e);
    check_cache(&model, "qwen2-window-f16", &e);
    check_greedy(&model, "qwen2-window-f16", &e);
}

#[test]
fn qwen2_sliding_window_from_layer_types_bf16_matches_transformers() {
    let model = Model::load(&fixture_dir("qwen2-layer-types-bf16")).unwrap();
    // transformers 5's layer_types: sliding, full, sliding (max_window_layers 2 would say
    // full, full, sliding).
    assert_eq!(model.config.attention_windows, vec![Some(3), None, Some(3)]);
    assert!(model.config.tie_word_embeddings);
    let e = expected("qwen2-layer-types-bf16");
    let full = e.ids[3].len();
    assert_eq!(attended_keys_at_the_end(&e, 3), [3, full, 3]);
    check_logits(&model, "qwen2-layer-types-bf16", &e);
    check_cache(&model, "qwen2-layer-types-bf16", &e);
    check_greedy(&model, "qwen2-layer-types-bf16", &e);
}

/// Qwen3: a per-head RMSNorm of q and of k before rotary (random gains), head_dim 12 ≠ 40 / 4,
/// grouped-query heads, no biases, tied embeddings, and Qwen2's window keys (layer 0 full,
/// layers 1 and 2 a window of 3), BF16.
#[test]
fn qwen3_with_per_head_qk_norms_bf16_matches_transformers() {
    let model = Model::load(&fixture_dir("qwen3-bf16")).unwrap();
    let config = &model.config;
    assert_eq!(
        (
            config.n_heads,
            config.n_kv_heads,
            config.d_head,
            config.d_model
        ),
        (4, 2, 12, 40)
    );
    assert!(config.has_qk_norm());
    assert!(config.tie_word_embeddings && !config.attention_bias);
    assert_eq!(model.config.attention_windows, vec![None, Some(3), Some(3)]);
    let e = expected("qwen3-bf16");
    let full = e.ids[3].len();
    assert_eq!(attended_keys_at_the_end(&e, 3), [full, 3, 3]);
    check_logits(&model, "qwen3-bf16", &e);
    check_cache(&model, "qwen3-bf16", &e);
    check_greedy(&model, "qwen3-bf16", &e);
}

#[test]
fn stories260k_matches_transformers() {
    let model = Model::load(&stories_dir()).unwrap();
    let e = expected("stories260K");
    check_logits(&model, "stories260K", &e);
    check_cache(&model, "stories260K", &e);
}

#[test]
fn stories260k_greedy_continuation() {
    let model = Model::load(&stories_dir()).unwrap();
    let prompt = model.encode_prompt("Once upon a time").unwrap();
    let generated = model.generate_greedy(&prompt, 20).unwrap();
    let text = model.tokenizer.decode(&generated[prompt.len()..]);
    assert_eq!(
        text,
        ", there was a little girl named Lily. She loved to play outsid"
    );
    // The same string HF transformers generated when the fixture was written.
    let e = expected("stories260K");
    assert_eq!(text, e.meta["greedy_continuation"].as_str().unwrap());
}

#[test]
fn gemma2_bf16_matches_transformers() {
    let model = Model::load(&fixture_dir("gemma2-bf16")).unwrap();
    let config = &model.config;
    assert_eq!(config.architecture, circuit::model::Architecture::Gemma2);
    // head_dim 16, not hidden_size / heads = 12; grouped-query attention; tied embeddings.
    assert_eq!(
        (config.n_heads, config.n_kv_heads, config.d_head),
        (4, 2, 16)
    );
    assert!(config.tie_word_embeddings && !config.attention_bias);
    let scaling = config.scaling;
    assert_eq!(scaling.embed, Some(48f32.sqrt()));
    assert_eq!(scaling.query, Some((24f64).powf(-0.5) as f32));
    assert_eq!(
        (scaling.attn_logit_softcap, scaling.final_logit_softcap),
        (Some(4.0), Some(5.0))
    );
    let e = expected("gemma2-bf16");
    check_logits(&model, "gemma2-bf16", &e);
    check_cache(&model, "gemma2-bf16", &e);
    check_greedy(&model, "gemma2-bf16", &e);
    // Both soft caps bind on this fixture (so a missing cap would fail the parity above): some
    // score and some logit come close to their cap, which tanh reaches only from far beyond it.
    let out = model
        .forward(
            &e.ids,
            &ForwardOptions {
                all_logits: true,
                cache: true,
            },
            &NoInterventions,
        )
        .unwrap();
    let cache = out.cache.unwrap();
    let largest_score = (cache.layers.iter())
        .flat_map(|l| l.scores.iter().copied().filter(|s| s.is_finite()))
        .fold(0f32, |m, s| m.max(s.abs()));
    let largest_logit = out.logits.iter().fold(0f32, |m, l| m.max(l.abs()));
    eprintln!("largest |score| {largest_score} (cap 4), |logit| {largest_logit} (cap 5)");
    assert!(
        largest_score > 3.0 && largest_score < 4.0,
        "{largest_score}"
    );
    assert!(
        largest_logit > 4.0 && largest_logit < 5.0,
        "{largest_logit}"
    );
}
