//! Loading: the layouts a HuggingFace folder may come in (sharded, names without the
//! `transformer.` prefix, compiled-in bytes), and bad input, one test each: a clear
//! `circuit::model::*` diagnostic naming the file, tensor or prompt and what was expected, never
//! a panic. Broken folders are built here in tempdirs from the gpt2-tiny fixture (and, for the
//! GPT-NeoX family's own settings and tensors, from the neox fixtures).

use std::path::{Path, PathBuf};

use circuit::model::{ForwardOptions, Model, ModelError, NoInterventions};
use miette::Diagnostic;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    fixture_named("gpt2-tiny")
}

fn fixture_named(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// A copy of the gpt2-tiny folder.
fn copy_fixture() -> tempfile::TempDir {
    copy_fixture_named("gpt2-tiny")
}

/// A copy of the fixture folder `name`.
fn copy_fixture_named(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture_named(name).join(file), dir.path().join(file)).unwrap();
    }
    dir
}

/// Rewrites `model.safetensors` in `dir`, a copy of gpt2-tiny: `edit` gets each tensor and
/// returns what to store instead (`None` drops it).
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    rewrite_weights_of("gpt2-tiny", dir, edit)
}

/// [`rewrite_weights`] of a copy of the fixture `name`.
fn rewrite_weights_of(
    name: &str,
    dir: &Path,
    edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let bytes = std::fs::read(fixture_named(name).join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            edit(&name, view.dtype(), view.shape(), view.data())
                .map(|(dtype, shape, data)| (name, dtype, shape, data))
        })
        .collect();
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn unchanged(
    _: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
) -> Option<(Dtype, Vec<usize>, Vec<u8>)> {
    Some((dtype, shape.to_vec(), data.to_vec()))
}

/// Loads and expects an error with diagnostic `code` whose message contains every `needle`.
fn load_error(dir: &Path, code: &str, needles: &[&str]) -> ModelError {
    let err = Model::load(dir).expect_err("loading must fail");
    check(&err, code, needles);
    err
}

fn check(err: &ModelError, code: &str, needles: &[&str]) {
    let got_code = err.code().map(|c| c.to_string()).unwrap_or_default();
    assert_eq!(got_code, code, "{err}");
    let message = format!("{err}");
    for needle in needles {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
}

#[test]
fn missing_config() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    load_error(
        dir.path(),
        "circuit::model::config_missing",
        &["config.json"],
    );
}

#[test]
fn missing_weights() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = load_error(
        dir.path(),
        "circuit::model::weights_missing",
        &["model.safetensors"],
    );
    assert!(err.help().is_some());
}

#[test]
fn missing_tokenizer() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    load_error(dir.path(), "circuit::model::tokenizer", &["tokenizer.json"]);
}

#[test]
fn missing_shard_of_a_sharded_model() {
    let dir = copy_fixture();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    load_error(
        dir.path(),
        "circuit::model::weights_missing",
        &["model-00001-of-00002.safetensors"],
    );
}

#[test]
fn unknown_model_type() {
    let dir = copy_fixture();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"gpt2\"", "\"mamba\""),
    )
    .unwrap();
    let err = load_error(
        dir.path(),
        "circuit::model::unknown_model_type",
        &["mamba", "config.json"],
    );
    // The help lists every family the engine reads.
    let help = err.help().unwrap().to_string();
    assert_eq!(
        help,
        r#"supported model types are "gpt2", "llama", "gpt_neox", "qwen2", "qwen3", "mistral" and "gemma2""#
    );
}

#[test]
fn tensor_missing() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |name, dtype, shape, data| {
        (name != "transformer.h.1.mlp.c_fc.weight")
            .then(|| unchanged(name, dtype, shape, data).unwrap())
    });
    load_error(
        dir.path(),
        "circuit::model::tensor_missing",
        &["transformer.h.1.mlp.c_fc.weight", "model.safetensors"],
    );
}

#[test]
fn tensor_of_wrong_shape() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |name, dtype, shape, data| {
        if name == "transformer.ln_f.bias" {
            Some((dtype, vec![79], data[..79 * 4].to_vec()))
        } else {
            unchanged(name, dtype, shape, data)
        }
    });
    load_error(
        dir.path(),
        "circuit::model::tensor_shape",
        &["transformer.ln_f.bias", "[79]", "[80]"],
    );
}

#[test]
fn tensor_of_wrong_dtype() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |name, dtype, shape, data| {
        if name == "transformer.wpe.weight" {
            Some((Dtype::I32, shape.to_vec(), data.to_vec()))
        } else {
            unchanged(name, dtype, shape, data)
        }
    });
    load_error(
        dir.path(),
        "circuit::model::tensor_dtype",
        &["transformer.wpe.weight", "I32", "F32, F16 or BF16"],
    );
}

#[test]
fn truncated_safetensors_header() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // The 8-byte length survives, the JSON header it announces does not.
    std::fs::write(&path, &bytes[..100]).unwrap();
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &["model.safetensors", "truncated"],
    );
    // Shorter than the length field itself.
    std::fs::write(&path, &bytes[..5]).unwrap();
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn truncated_safetensors_data() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn oversized_safetensors_header() {
    let dir = copy_fixture();
    let path = dir.path().join("model.safetensors");
    let mut bytes = 200_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &["model.safetensors", "100 MB"],
    );
}

#[test]
fn tokenizer_vocab_larger_than_the_embedding() {
    // Shrink the model's vocabulary to 250 rows; the tokenizer still has 300 ids.
    let dir = copy_fixture();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"vocab_size\": 300", "\"vocab_size\": 250"),
    )
    .unwrap();
    rewrite_weights(dir.path(), |name, dtype, shape, data| {
        if name == "transformer.wte.weight" {
            Some((
                dtype,
                vec![250, shape[1]],
                data[..250 * shape[1] * 4].to_vec(),
            ))
        } else {
            unchanged(name, dtype, shape, data)
        }
    });
    load_error(
        dir.path(),
        "circuit::model::vocab_mismatch",
        &["tokenizer.json", "300", "250"],
    );
}

#[test]
fn empty_prompt() {
    let model = Model::load(&fixture()).unwrap();
    let err = model.encode_prompt("").unwrap_err();
    check(&err, "circuit::model::empty_prompt", &["\"\""]);
    let err = model
        .forward(
            &[vec![5, 6], vec![]],
            &ForwardOptions::default(),
            &NoInterventions,
        )
        .unwrap_err();
    check(&err, "circuit::model::empty_prompt", &["#1"]);
}

#[test]
fn prompt_longer_than_the_context() {
    let model = Model::load(&fixture()).unwrap();
    let err = model
        .forward(&[vec![7; 49]], &ForwardOptions::default(), &NoInterventions)
        .unwrap_err();
    check(
        &err,
        "circuit::model::prompt_too_long",
        &["#0", "49 tokens", "context of 48"],
    );
    let long = "Tom and Lily went to the park. ".repeat(5);
    let err = model.encode_prompt(&long).unwrap_err();
    check(
        &err,
        "circuit::model::prompt_too_long",
        &["Tom and Lily went to the park."],
    );
}

#[test]
fn token_id_outside_the_vocabulary() {
    let model = Model::load(&fixture()).unwrap();
    let err = model
        .forward(
            &[vec![1, 300]],
            &ForwardOptions::default(),
            &NoInterventions,
        )
        .unwrap_err();
    check(&err, "circuit::model::token_out_of_range", &["300", "#0"]);
}

#[test]
fn sharded_weights_load_like_a_single_file() {
    // Split the fixture's tensors over two shard files with an index, as HF does for big models.
    let dir = copy_fixture();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut map = serde_json::Map::new();
    let mut shards: [Vec<(String, TensorView)>; 2] = [vec![], vec![]];
    for (i, (name, view)) in tensors.tensors().into_iter().enumerate() {
        let shard = i % 2;
        map.insert(
            name.clone(),
            format!("model-0000{}-of-00002.safetensors", shard + 1).into(),
        );
        shards[shard].push((name, view));
    }
    for (i, shard) in shards.into_iter().enumerate() {
        let path = dir
            .path()
            .join(format!("model-0000{}-of-00002.safetensors", i + 1));
        safetensors::serialize_to_file(shard, None, &path).unwrap();
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let sharded = Model::load(dir.path()).unwrap();
    let single = Model::load(&fixture()).unwrap();
    let ids = vec![single.encode_prompt("The cat sat").unwrap()];
    let a = sharded
        .forward(&ids, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    let b = single
        .forward(&ids, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    assert_eq!(a.logits, b.logits);
    assert_ne!(sharded.weights_hash(), single.weights_hash());
    assert_eq!(single.weights_hash().len(), 64);
}

fn end_logits(model: &Model) -> ndarray::Array3<f32> {
    let ids = vec![model.encode_prompt("The cat sat").unwrap()];
    model
        .forward(&ids, &ForwardOptions::default(), &NoInterventions)
        .unwrap()
        .logits
}

#[test]
fn gpt2_tensor_names_without_the_transformer_prefix() {
    let dir = copy_fixture();
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, TensorView)> = tensors
        .tensors()
        .into_iter()
        .inspect(|(name, _)| assert!(name.starts_with("transformer.")))
        .map(|(name, view)| (name.trim_start_matches("transformer.").to_string(), view))
        .collect();
    safetensors::serialize_to_file(renamed, None, &dir.path().join("model.safetensors")).unwrap();
    let unprefixed = Model::load(dir.path()).unwrap();
    assert_eq!(
        end_logits(&unprefixed),
        end_logits(&Model::load(&fixture()).unwrap())
    );
}

#[test]
fn from_static_equals_load_and_hashes_the_file() {
    let read = |f: &str| std::fs::read(fixture().join(f)).unwrap();
    let weights: &'static [u8] = Box::leak(read("model.safetensors").into_boxed_slice());
    let config = String::from_utf8(read("config.json")).unwrap();
    let model = Model::from_static("tiny", &config, weights, &read("tokenizer.json")).unwrap();
    let loaded = Model::load(&fixture()).unwrap();
    assert_eq!(end_logits(&model), end_logits(&loaded));
    use sha2::Digest;
    let expected = hex::encode(sha2::Sha256::digest(weights));
    assert_eq!(model.weights_hash(), expected);
    assert_eq!(loaded.weights_hash(), expected);
}

#[test]
fn from_static_names_the_builtin_model_in_errors() {
    let config = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let err = Model::from_static("tiny", &config, b"\x05", b"{}").unwrap_err();
    check(
        &err,
        "circuit::model::tokenizer",
        &["<built-in model tiny>"],
    );
    let tokenizer = std::fs::read(fixture().join("tokenizer.json")).unwrap();
    let err = Model::from_static("tiny", &config, b"\x05", &tokenizer).unwrap_err();
    check(
        &err,
        "circuit::model::bad_safetensors",
        &["<built-in model tiny>/model.safetensors"],
    );
}

#[test]
fn open_unknown_builtin_is_a_clear_error() {
    let source = circuit::model::ModelSource::Builtin("no-such-model".to_string());
    let err = Model::open(&source).unwrap_err();
    assert!(err
        .code()
        .unwrap()
        .to_string()
        .starts_with("circuit::model::"));
    assert!(format!("{err:?}").contains("no-such-model"), "{err:?}");
}

#[test]
fn unsupported_gpt2_setting() {
    let dir = copy_fixture();
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace(
            "\"scale_attn_by_inverse_layer_idx\": false",
            "\"scale_attn_by_inverse_layer_idx\": true",
        ),
    )
    .unwrap();
    load_error(
        dir.path(),
        "circuit::model::unsupported",
        &["scale_attn_by_inverse_layer_idx"],
    );
}

/// The gpt2-tiny folder with `n_layer` set to `n`.
fn with_n_layer(n: u64) -> tempfile::TempDir {
    let dir = copy_fixture();
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["n_layer"] = n.into();
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn fewer_layers_in_the_config_than_in_the_weights() {
    // The fixture has 3 layers; with 2 the third was silently ignored.
    let dir = with_n_layer(2);
    load_error(
        dir.path(),
        "circuit::model::layer_count",
        &["n_layer", "2", "3 layers"],
    );
}

#[test]
fn a_billion_layers_is_an_error_not_an_abort() {
    let dir = with_n_layer(1_000_000_000);
    load_error(
        dir.path(),
        "circuit::model::layer_count",
        &["n_layer", "1000000000", "3 layers"],
    );
}

#[test]
fn an_unused_tensor_fails_the_load_naming_it() {
    let dir = copy_fixture();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let extra = f32_bytes(&[1.0; 4]);
    let write_with = |extras: &[&str]| {
        let mut views: Vec<(String, TensorView)> = tensors.tensors();
        for name in extras {
            views.push((
                name.to_string(),
                TensorView::new(Dtype::F32, vec![4], &extra).unwrap(),
            ));
        }
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    };
    write_with(&["transformer.h.0.mlp.gate.weight", "score.weight"]);
    load_error(
        dir.path(),
        "circuit::model::unexpected_tensors",
        &[
            "2 tensor(s)",
            "`score.weight`",
            "`transformer.h.0.mlp.gate.weight`",
        ],
    );

    // The documented extras load (GPT-2's mask buffers).
    write_with(&[
        "transformer.h.0.attn.bias",
        "transformer.h.2.attn.masked_bias",
    ]);
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(
        end_logits(&model),
        end_logits(&Model::load(&fixture()).unwrap())
    );
}

#[test]
fn a_gpt2_lm_head_must_equal_the_tied_embedding() {
    let dir = copy_fixture();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let wte = tensors.tensor("transformer.wte.weight").unwrap();
    let mut changed = wte.data().to_vec();
    changed[0] ^= 1; // one bit of one weight
    for (data, loads) in [(wte.data().to_vec(), true), (changed, false)] {
        let mut views: Vec<(String, TensorView)> = tensors.tensors();
        views.push((
            "lm_head.weight".to_string(),
            TensorView::new(Dtype::F32, wte.shape().to_vec(), &data).unwrap(),
        ));
        safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
        match Model::load(dir.path()) {
            Ok(_) => assert!(loads, "a different lm_head must not load"),
            Err(err) => {
                assert!(!loads, "{err}");
                check(&err, "circuit::model::unsupported", &["lm_head.weight"]);
            }
        }
    }
}

#[test]
fn a_non_finite_weight_is_named() {
    let dir = copy_fixture();
    rewrite_weights(dir.path(), |name, dtype, shape, data| {
        if name == "transformer.h.1.mlp.c_fc.weight" {
            let mut data = data.to_vec();
            data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
            return Some((dtype, shape.to_vec(), data));
        }
        unchanged(name, dtype, shape, data)
    });
    load_error(
        dir.path(),
        "circuit::model::non_finite_weight",
        &["transformer.h.1.mlp.c_fc.weight", "NaN", "index 10"],
    );
}

/// Writes `f32::INFINITY` into the MLP output of one layer.
struct InfiniteMlpOut(usize);
impl circuit::model::Interventions for InfiniteMlpOut {
    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ndarray::ArrayViewMut3<f32>) {
        if layer == self.0 {
            mlp_out[[1, 0, 3]] = f32::INFINITY;
        }
    }
}

/// `"ab"` and `"a b c"`, encoded: prompt #1 is the longer.
fn two_prompts_of_unequal_length(model: &Model) -> Vec<Vec<u32>> {
    ["ab", "a b c"]
        .iter()
        .map(|p| model.encode_prompt(p).unwrap())
        .collect()
}

#[test]
fn non_finite_logits_name_the_first_block_they_appear_in() {
    let model = Model::load(&fixture()).unwrap();
    let prompts = two_prompts_of_unequal_length(&model);
    for all_logits in [false, true] {
        let options = ForwardOptions {
            all_logits,
            cache: false,
        };
        let err = model
            .forward(&prompts, &options, &InfiniteMlpOut(1))
            .expect_err("infinite activations");
        check(
            &err,
            "circuit::model::non_finite_activations",
            &["prompt #1", "the MLP output of layer 1"],
        );
    }
}

#[test]
fn a_gradient_pass_whose_logits_are_not_finite_is_the_same_error_under_every_metric() {
    // Under `logit_diff` the pass computes its two logits a prompt itself, outside the
    // forward's unembedding (`EndLogits::AnswerAndDistractor`): an infinite input must still be
    // the forward's coded error, naming the prompt and the block.
    use circuit::model::backward::{gradients_at_embeddings, GradientError, Objective};
    let model = Model::load(&fixture()).unwrap();
    let prompts = two_prompts_of_unequal_length(&model);
    let targets = vec![(1, 2), (3, 4)];
    let embedded = model.input_embeddings(&prompts).unwrap();
    let seq = prompts.iter().map(Vec::len).max().unwrap();
    let mut embeddings = ndarray::Array3::<f32>::zeros((2, seq, model.config.d_model)); // (B, T, D)
    for (b, e) in embedded.iter().enumerate() {
        (embeddings.slice_mut(ndarray::s![b, ..e.nrows(), ..])).assign(e);
    }
    embeddings[[1, prompts[1].len() - 1, 5]] = f32::INFINITY;
    let clean = model
        .forward(&prompts, &ForwardOptions::default(), &NoInterventions)
        .unwrap();
    let full = clean.logits.index_axis(ndarray::Axis(1), 0).to_owned(); // (B, V)
    for metric in ["logit_diff", "prob", "logprob", "kl"] {
        let objective = Objective::from_metric_name(metric, Some(full.view())).unwrap();
        let err = gradients_at_embeddings(
            &model,
            &prompts,
            &targets,
            objective,
            Default::default(),
            embeddings.view(),
            None,
        )
        .expect_err("infinite activations");
        let GradientError::Model(err) = err else {
            panic!("{metric}: not the forward's error: {err}");
        };
        check(
            &err,
            "circuit::model::non_finite_activations",
            &["prompt #1", "the embedding"],
        );
    }
}

/// The fixture's weights with the JSON header entry of `tensor` edited by `edit`.
fn edit_header(dir: &Path, tensor: &str, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    edit(&mut header[tensor]);
    let header = header.to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[8 + header_len..]);
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
}

#[test]
fn errors_inside_the_safetensors_header_name_the_tensor() {
    let dir = copy_fixture();
    let tensor = "transformer.ln_f.bias";
    // A shape that does not match the tensor's bytes.
    edit_header(dir.path(), tensor, |entry| {
        entry["shape"] = serde_json::json!([81])
    });
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &[tensor, "[81]", "324 bytes", "span 320"],
    );
    // A dtype that does not exist.
    edit_header(dir.path(), tensor, |entry| entry["dtype"] = "F33".into());
    load_error(
        dir.path(),
        "circuit::model::bad_safetensors",
        &[tensor, "unknown dtype \"F33\""],
    );
    // Offsets overlapping the next tensor's.
    edit_header(dir.path(), tensor, |entry| {
        let offsets = entry["data_offsets"].as_array().unwrap();
        let (start, end) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
        entry["data_offsets"] = serde_json::json!([start + 4, end + 4]);
    });
    load_error(dir.path(), "circuit::model::bad_safetensors", &[tensor]);
}

// ---- GPT-NeoX / Pythia -----------------------------------------------------------------------

/// A copy of the fixture `name` whose config.json is edited as JSON.
fn with_config(name: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = copy_fixture_named(name);
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn gpt_neox_scaled_rotary_is_an_error_naming_the_key() {
    // transformers 4's spelling (top-level rope_scaling) ...
    let dir = with_config("neox-sequential-bf16", |c| {
        c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
    });
    load_error(
        dir.path(),
        "circuit::model::unsupported_config",
        &["`rope_scaling`", "linear"],
    );
    // ... and transformers 5's (rope_parameters.rope_type).
    let dir = with_config("neox-parallel-f16", |c| {
        c["rope_parameters"]["rope_type"] = "dynamic".into();
    });
    load_error(
        dir.path(),
        "circuit::model::unsupported_config",
        &["`rope_parameters.rope_type`", "dynamic"],
    );
}

#[test]
fn gpt_neox_rotary_fraction_of_an_odd_width_is_an_error_naming_the_key() {
    // 0.2 of a head of 16 is 3 dimensions: rotary embeddings turn pairs.
    let dir = with_config("neox-sequential-bf16", |c| {
        c["rotary_pct"] = 0.2.into();
    });
    let err = load_error(
        dir.path(),
        "circuit::model::unsupported_config",
        &["`rotary_pct`", "0.2"],
    );
    let help = err.help().unwrap().to_string();
    assert!(help.contains("of a head of 16 is 3 dimensions"), "{help}");
    let dir = with_config("neox-parallel-f16", |c| {
        c["rope_parameters"]["partial_rotary_factor"] = 0.2.into();
    });
    load_error(
        dir.path(),
        "circuit::model::unsupported_config",
        &["`rope_parameters.partial_rotary_factor`"],
    );
}

#[test]
fn gpt_neox_other_activation_is_an_error() {
    let dir = with_config("neox-parallel-f16", |c| {
        c["hidden_act"] = "relu".into();
    });
    load_error(
        dir.path(),
        "circuit::model::unsupported",
        &["hidden_act", "relu"],
    );
}

#[test]
fn gpt_neox_attention_bias_missing_from_the_weights() {
    // The config says the projections have biases; the file (written without) has none.
    let dir = with_config("neox-sequential-bf16", |c| {
        c["attention_bias"] = true.into();
    });
    let err = load_error(
        dir.path(),
        "circuit::model::tensor_missing",
        &["gpt_neox.layers.0.attention.query_key_value.bias"],
    );
    assert!(err.help().unwrap().to_string().contains("a GPT-NeoX model"));
}

#[test]
fn gpt_neox_fused_qkv_of_the_wrong_shape() {
    let dir = copy_fixture_named("neox-parallel-f16");
    rewrite_weights_of(
        "neox-parallel-f16",
        dir.path(),
        |name, dtype, shape, data| {
            if name == "gpt_neox.layers.1.attention.query_key_value.weight" {
                // 128 of the 192 rows: q and k of every head but no v.
                Some((dtype, vec![128, 64], data[..128 * 64 * 2].to_vec()))
            } else {
                unchanged(name, dtype, shape, data)
            }
        },
    );
    load_error(
        dir.path(),
        "circuit::model::tensor_shape",
        &[
            "gpt_neox.layers.1.attention.query_key_value.weight",
            "[128, 64]",
            "[192, 64]",
        ],
    );
}

#[test]
fn gpt_neox_embed_out_of_the_wrong_dtype() {
    let dir = copy_fixture_named("neox-parallel-f16");
    rewrite_weights_of(
        "neox-parallel-f16",
        dir.path(),
        |name, dtype, shape, data| {
            if name == "embed_out.weight" {
                Some((Dtype::I16, shape.to_vec(), data.to_vec()))
            } else {
                unchanged(name, dtype, shape, data)
            }
        },
    );
    load_error(
        dir.path(),
        "circuit::model::tensor_dtype",
        &["embed_out.weight", "I16"],
    );
}

#[test]
fn gpt_neox_buffers_of_older_checkpoints_are_not_weights() {
    // Pythia checkpoints saved by older transformers hold each layer's causal-mask buffers and
    // rotary frequencies; the engine derives both, and loads the same model.
    let dir = copy_fixture_named("neox-parallel-f16");
    let original = Model::load(&fixture_named("neox-parallel-f16")).unwrap();
    let bytes =
        std::fs::read(fixture_named("neox-parallel-f16").join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = tensors.tensors();
    let mask = vec![1u8; 4 * 4];
    let masked_bias = f32_bytes(&[-1e9]);
    let inv_freq = f32_bytes(&[1.0, 0.5]);
    for layer in 0..3 {
        let l = format!("gpt_neox.layers.{layer}.attention");
        views.push((
            format!("{l}.bias"),
            TensorView::new(Dtype::BOOL, vec![1, 1, 4, 4], &mask).unwrap(),
        ));
        views.push((
            format!("{l}.masked_bias"),
            TensorView::new(Dtype::F32, vec![], &masked_bias).unwrap(),
        ));
        views.push((
            format!("{l}.rotary_emb.inv_freq"),
            TensorView::new(Dtype::F32, vec![2], &inv_freq).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let model = Model::load(dir.path()).unwrap();
    assert_eq!(end_logits(&model), end_logits(&original));
}

// ---- Qwen2 ---------------------------------------------------------------------------------

#[test]
fn qwen2_layer_types_the_engine_does_not_know_are_an_error_naming_the_key() {
    let dir = with_config("qwen2-tied-f32", |c| {
        c["use_sliding_window"] = true.into();
        c["layer_types"] = serde_json::json!(["chunked_attention", "full_attention"]);
    });
    load_error(
        dir.path(),
        "circuit::model::config_field",
        &["`layer_types`", "\"sliding_attention\""],
    );
    // A list that is not one type per layer.
    let dir = with_config("qwen2-tied-f32", |c| {
        c["use_sliding_window"] = true.into();
        c["layer_types"] = serde_json::json!(["sliding_attention"]);
    });
    load_error(
        dir.path(),
        "circuit::model::config_field",
        &["`layer_types`", "a list of 2 layer types"],
    );
}

#[test]
fn qwen2_sliding_window_that_cannot_bind_loads_the_same_model() {
    let original = Model::load(&fixture_named("qwen2-tied-f32")).unwrap();
    for edit in [
        // No layer slides ...
        serde_json::json!({"use_sliding_window": true, "sliding_window": 4,
                           "layer_types": ["full_attention", "full_attention"]}),
        // ... or the window is as long as the context.
        serde_json::json!({"use_sliding_window": true, "sliding_window": 64,
                           "max_window_layers": 0}),
    ] {
        let dir = with_config("qwen2-tied-f32", |c| {
            for (key, value) in edit.as_object().unwrap() {
                c[key] = value.clone();
            }
        });
        let model = Model::load(dir.path()).unwrap();
        assert_eq!(end_logits(&model), end_logits(&original), "{edit}");
    }
}

#[test]
fn qwen2_query_bias_missing_from_the_weights() {
    let dir = copy_fixture_named("qwen2-tied-f32");
    rewrite_weights_of("qwen2-tied-f32", dir.path(), |name, dtype, shape, data| {
        (name != "model.layers.1.self_attn.q_proj.bias")
            .then(|| unchanged(name, dtype, shape, data).unwrap())
    });
    let err = load_error(
        dir.path(),
        "circuit::model::tensor_missing",
        &["model.layers.1.self_attn.q_proj.bias"],
    );
    assert!(err.help().unwrap().to_string().contains("a Qwen2 model"));
}

// ---- Mistral -------------------------------------------------------------------------------

#[test]
fn mistral_window_binds_only_where_a_prompt_is_longer() {
    // A window as long as the context never binds: the same model as `sliding_window: null`.
    let original = Model::load(&fixture_named("mistral-head-dim-bf16")).unwrap();
    let dir = with_config("mistral-head-dim-bf16", |c| {
        c["sliding_window"] = 64.into();
    });
    let long = Model::load(dir.path()).unwrap();
    assert_eq!(long.config.attention_windows, vec![Some(64); 2]);
    assert_eq!(end_logits(&long), end_logits(&original));
    // A window of 2 keys binds on every prompt of more than 2 tokens: other numbers (their
    // parity with transformers is engine_parity::mistral_with_a_binding_sliding_window_*).
    let dir = with_config("mistral-head-dim-bf16", |c| {
        c["sliding_window"] = 2.into();
    });
    let short = Model::load(dir.path()).unwrap();
    assert_ne!(end_logits(&short), end_logits(&original));
}

#[test]
fn mistral_bias_in_the_weights_is_an_unused_tensor() {
    // transformers' Mistral has no biases: one in the file would be ignored there, so here it
    // is an error rather than a different model.
    let dir = copy_fixture_named("mistral-head-dim-bf16");
    let bias = vec![0u8; 64 * 2];
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = tensors.tensors();
    views.push((
        "model.layers.0.self_attn.q_proj.bias".to_string(),
        TensorView::new(Dtype::BF16, vec![64], &bias).unwrap(),
    ));
    let path = dir.path().join("weights.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::rename(&path, dir.path().join("model.safetensors")).unwrap();
    load_error(
        dir.path(),
        "circuit::model::unexpected_tensors",
        &["model.layers.0.self_attn.q_proj.bias"],
    );
}

#[test]
fn gemma2_windows_are_read_as_gemma2config_reads_them() {
    let windows = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = with_config("gemma2-bf16", edit);
        Model::load(dir.path()).unwrap().config.attention_windows
    };
    assert_eq!(
        windows(&|c| c["sliding_window"] = 16.into()),
        [Some(16), None, Some(16)]
    );
    // Gemma2Config's defaults when the keys are absent: a 4096-key window on the even layers.
    assert_eq!(
        windows(&|c| {
            let object = c.as_object_mut().unwrap();
            object.remove("sliding_window");
            object.remove("layer_types");
            c["max_position_embeddings"] = 8192.into();
        }),
        [Some(4096), None, Some(4096)]
    );
    // Only the layers `layer_types` names slide.
    assert_eq!(
        windows(&|c| {
            c["sliding_window"] = 16.into();
            c["layer_types"] =
                serde_json::json!(["full_attention", "full_attention", "sliding_attention"]);
        }),
        [None, None, Some(16)]
    );
    // No window, every layer full, or a window no prompt reaches: the same model.
    let unwindowed = with_config("gemma2-bf16", |c| {
        c["sliding_window"] = serde_json::Value::Null
    });
    let original = end_logits(&Model::load(unwindowed.path()).unwrap());
    for edit in [
        serde_json::json!({"sliding_window": 64}),
        serde_json::json!({"sliding_window": 16, "layer_types": ["full_attention", "full_attention", "full_attention"]}),
    ] {
        let dir = with_config("gemma2-bf16", |c| {
            for (key, value) in edit.as_object().unwrap() {
                c[key] = value.clone();
            }
        });
        assert_eq!(end_logits(&Model::load(dir.path()).unwrap()), original);
    }
}

#[test]
fn gemma2_unimplemented_variants_are_errors_naming_the_key() {
    for (key, value, needle) in [
        (
            "hidden_activation",
            serde_json::json!("gelu"),
            "`hidden_activation` = \"gelu\"",
        ),
        (
            "use_bidirectional_attention",
            serde_json::json!(true),
            "`use_bidirectional_attention` = true",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "linear", "rope_theta": 700.0, "factor": 2.0}),
            "`rope_parameters.rope_type` = \"linear\"",
        ),
    ] {
        let dir = with_config("gemma2-bf16", |c| {
            c[key] = value.clone();
        });
        load_error(dir.path(), "circuit::model::unsupported_config", &[needle]);
    }
    // A soft cap must be a positive number or null.
    let dir = with_config("gemma2-bf16", |c| {
        c["attn_logit_softcapping"] = 0.into();
    });
    load_error(
        dir.path(),
        "circuit::model::config_field",
        &["attn_logit_softcapping"],
    );
    // Switching a cap off changes the logits (the fixture's caps bind).
    let dir = with_config("gemma2-bf16", |c| {
        c["final_logit_softcapping"] = serde_json::Value::Null;
    });
    let uncapped = Model::load(dir.path()).unwrap();
    assert_eq!(uncapped.config.scaling.final_logit_softcap, None);
    let original = end_logits(&Model::load(&fixture_named("gemma2-bf16")).unwrap());
    assert_ne!(end_logits(&uncapped), original);
}

#[test]
fn gemma2_missing_post_norm_is_a_missing_tensor() {
    let dir = copy_fixture_named("gemma2-bf16");
    rewrite_weights_of("gemma2-bf16", dir.path(), |name, dtype, shape, data| {
        (name != "model.layers.1.post_feedforward_layernorm.weight")
            .then(|| (dtype, shape.to_vec(), data.to_vec()))
    });
    load_error(
        dir.path(),
        "circuit::model::tensor_missing",
        &["model.layers.1.post_feedforward_layernorm.weight"],
    );
}
