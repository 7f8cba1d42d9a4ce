//! Fuzzing the readers of untrusted model files, bounded so that it runs in every `cargo test`:
//! `config.json` ([`ModelConfig::from_json_str`]) and safetensors headers and tensors
//! ([`WeightFiles`], from bytes and from a file; and the cache's
//! [`ReferenceValues::from_safetensors`]). Every input gives `Ok` or a coded error: never a
//! panic, never an abort, huge sizes and offsets included.

use std::path::{Path, PathBuf};

use miette::Diagnostic;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::config::ModelConfig;
use super::weights::WeightFiles;
use super::ModelError;

/// Numbers a hostile or broken file holds: zero, negative, fractional, the edges of every
/// integer width and of f64.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..70).prop_map(Value::from),
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(1e-300)),
        Just(json!(1e300)),
        Just(json!(u32::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1u64 << 40)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |x| x.is_finite())
            .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        "[a-z_]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every key the config reader looks at, for any family.
const CONFIG_KEYS: &[&str] = &[
    "n_embd",
    "n_head",
    "n_inner",
    "n_layer",
    "vocab_size",
    "n_positions",
    "n_ctx",
    "layer_norm_epsilon",
    "activation_function",
    "bos_token_id",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "num_hidden_layers",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "tie_word_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "rotary_pct",
    "rotary_emb_base",
    "partial_rotary_factor",
    "use_parallel_residual",
    "attention_bias",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    "hidden_activation",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "use_bidirectional_attention",
];

/// A config object: a model type and some of the keys, each with a plausible or hostile value.
fn config() -> impl Strategy<Value = Value> {
    let model_type = prop_oneof![
        Just(json!("gpt2")),
        Just(json!("llama")),
        Just(json!("gpt_neox")),
        Just(json!("qwen2")),
        Just(json!("mistral")),
        Just(json!("qwen3")),
        Just(json!("gemma2")),
        Just(json!("mamba")),
        value(),
    ];
    let field = (
        prop::sample::select(CONFIG_KEYS),
        prop_oneof![number(), value()],
    );
    (
        model_type,
        prop::collection::vec(field, 0..CONFIG_KEYS.len()),
    )
        .prop_map(|(t, fields)| {
            let mut object = serde_json::Map::new();
            object.insert("model_type".to_string(), t);
            for (key, v) in fields {
                object.insert(key.to_string(), v);
            }
            Value::Object(object)
        })
}

fn has_code(err: &dyn Diagnostic) -> bool {
    err.code().is_some()
}

/// A safetensors file: an 8-byte header length (the true one, or any), a header of tensors with
/// any dtype, shape and offsets, and some data bytes.
fn safetensors_bytes() -> impl Strategy<Value = Vec<u8>> {
    let dim = prop_oneof![
        0usize..5,
        Just(usize::MAX),
        Just(1usize << 32),
        Just(1usize << 62)
    ];
    let offset = prop_oneof![0usize..80, Just(usize::MAX), Just(1usize << 40)];
    let tensor = (
        prop::sample::select(&["F32", "F16", "BF16", "U8", "I64", "F64", "BOOL", "Q4"][..]),
        prop::collection::vec(dim, 0..4),
        (offset.clone(), offset),
    )
        .prop_map(|(dtype, shape, (a, b))| {
            json!({ "dtype": dtype, "shape": shape, "data_offsets": [a, b] })
        });
    let header = prop_oneof![
        prop::collection::btree_map("[a-z.]{1,8}", tensor, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()).to_string()),
        value().prop_map(|v| v.to_string()),
        "[ -~]{0,40}",
    ];
    let length = prop_oneof![
        Just(None),
        any::<u64>().prop_map(Some),
        Just(Some(u64::MAX)),
        Just(Some(0)),
    ];
    (
        header,
        length,
        prop::collection::vec(any::<u8>(), 0..96),
        any::<bool>(),
    )
        .prop_map(|(header, length, data, cut)| {
            let len = length.unwrap_or(header.len() as u64);
            let mut bytes = len.to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&data);
            if cut {
                bytes.truncate(bytes.len() / 2); // a truncated download
            }
            bytes
        })
}

/// A valid file of small tensors (any dtype the crate writes), then maybe one byte set to any
/// value or the file cut anywhere: the near-misses a truncated or bit-rotted download makes.
fn damaged_valid_safetensors() -> impl Strategy<Value = Vec<u8>> {
    use safetensors::Dtype;
    let dtype =
        prop::sample::select(&[Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::U8, Dtype::I64][..]);
    let tensor = (dtype, prop::collection::vec(0usize..4, 0..3));
    let damage = prop_oneof![
        Just(None),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Some((i, Some(b)))),
        any::<prop::sample::Index>().prop_map(|i| Some((i, None))),
    ];
    (prop::collection::vec(tensor, 1..4), damage).prop_map(|(tensors, damage)| {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(dtype, shape)| vec![0x3f; shape.iter().product::<usize>() * dtype.bitsize() / 8])
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .zip(&data)
            .enumerate()
            .map(|(i, ((dtype, shape), bytes))| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes);
                (format!("t.{i}"), view.expect("sizes match"))
            })
            .collect();
        let mut bytes = safetensors::serialize(views, None).expect("serializes");
        match damage {
            Some((i, Some(b))) => {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            Some((i, None)) => bytes.truncate(i.index(bytes.len())),
            None => {}
        }
        bytes
    })
}

/// Reads every tensor a file lists, with its own shape and with a wrong one.
fn read_all(files: &WeightFiles, bytes: &[u8]) -> Result<(), ModelError> {
    let Ok((_, metadata)) = safetensors::SafeTensors::read_metadata(bytes) else {
        return Ok(());
    };
    for (name, info) in metadata.tensors() {
        for shape in [info.shape.clone(), vec![1, 2, 3]] {
            if let Err(err) = files.tensor(&name, &shape) {
                assert!(has_code(&err), "{err}");
            }
        }
    }
    Ok(())
}

fn check_weights(bytes: Vec<u8>, dir: &Path) {
    // From bytes (a built-in model's path): leaked, as `include_bytes!` data lives forever.
    let leaked: &'static [u8] = Box::leak(bytes.clone().into_boxed_slice());
    match WeightFiles::from_static(leaked, PathBuf::from("fuzz.safetensors"), "GPT-2") {
        Ok(files) => read_all(&files, leaked).unwrap(),
        Err(err) => assert!(has_code(&err), "{err}"),
    }
    // From a file (memory-mapped).
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    match WeightFiles::open_dir(dir, "GPT-2") {
        Ok(files) => read_all(&files, &bytes).unwrap(),
        Err(err) => assert!(has_code(&err), "{err}"),
    }
    // The cache's reader of reference values: `None` or values, never a panic.
    let _ = crate::ablate::ReferenceValues::from_safetensors(&bytes);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn config_json_gives_a_config_or_a_coded_error(config in config()) {
        let text = config.to_string();
        if let Err(err) = ModelConfig::from_json_str(&text, Path::new("config.json")) {
            prop_assert!(has_code(&err), "{}", err);
        }
    }

    #[test]
    fn any_text_as_config_json_gives_a_coded_error_or_a_config(text in "\\PC{0,64}") {
        if let Err(err) = ModelConfig::from_json_str(&text, Path::new("config.json")) {
            prop_assert!(has_code(&err), "{}", err);
        }
    }

    #[test]
    fn safetensors_bytes_give_tensors_or_a_coded_error(bytes in safetensors_bytes()) {
        let dir = tempfile::tempdir().unwrap();
        check_weights(bytes, dir.path());
    }

    #[test]
    fn valid_safetensors_with_one_byte_changed_give_tensors_or_a_coded_error(
        bytes in damaged_valid_safetensors()
    ) {
        let dir = tempfile::tempdir().unwrap();
        check_weights(bytes, dir.path());
    }

    #[test]
    fn random_bytes_as_safetensors_give_a_coded_error(
        bytes in prop::collection::vec(any::<u8>(), 0..64)
    ) {
        let dir = tempfile::tempdir().unwrap();
        check_weights(bytes, dir.path());
    }
}

#[test]
fn a_valid_file_still_reads() {
    // The generator can make valid files; make sure the readers accept one for certain.
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data)
        .expect("a view");
    let bytes = safetensors::serialize([("w", view)], None).expect("serializes");
    let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let files = WeightFiles::from_static(leaked, PathBuf::from("ok.safetensors"), "GPT-2").unwrap();
    assert_eq!(files.tensor("w", &[2]).unwrap(), vec![1.0, 2.0]);
    assert!(matches!(
        files.tensor("w", &[3]),
        Err(ModelError::TensorShape { .. })
    ));
}
