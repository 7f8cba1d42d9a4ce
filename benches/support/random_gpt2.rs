//! Shared by the benches: a random-weight GPT-2 folder of any shape, and the peak RSS.
#![allow(dead_code)]

use std::io::{BufWriter, Write};
use std::path::Path;

use rand::{Rng, SeedableRng};

/// The shape of a random GPT-2.
#[derive(Clone, Copy, Debug)]
pub struct Gpt2Shape {
    pub layers: usize,
    pub heads: usize,
    pub d: usize,
    pub d_mlp: usize,
    pub vocab: usize,
    pub n_ctx: usize,
}

/// Peak resident memory of this process so far (VmHWM, Linux), in bytes.
pub fn peak_rss_bytes() -> f64 {
    status_bytes("VmHWM:")
}

/// Resident memory of this process now (VmRSS, Linux), in bytes.
pub fn rss_bytes() -> f64 {
    status_bytes("VmRSS:")
}

/// A `kB` field of /proc/self/status, in bytes (NaN where there is none).
fn status_bytes(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0)
}

/// A GPT-2 folder of `shape` with random weights, written tensor by tensor (never all in memory).
/// The tokenizer is the tiny test fixture's (300 ids ≤ 50257 embedding rows is allowed; the
/// bench feeds token ids directly).
pub fn write_random_gpt2(dir: &Path, shape: &Gpt2Shape) {
    let Gpt2Shape {
        layers,
        heads,
        d,
        d_mlp,
        vocab,
        n_ctx,
    } = *shape;
    let config = serde_json::json!({
        "model_type": "gpt2", "n_layer": layers, "n_head": heads, "n_embd": d, "n_inner": d_mlp,
        "n_positions": n_ctx, "vocab_size": vocab, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/gpt2-tiny/tokenizer.json");
    std::fs::copy(fixture, dir.join("tokenizer.json")).unwrap();

    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("wte.weight".into(), vec![vocab, d]),
        ("wpe.weight".into(), vec![n_ctx, d]),
    ];
    for i in 0..layers {
        for (name, shape) in [
            ("ln_1.weight", vec![d]),
            ("ln_1.bias", vec![d]),
            ("attn.c_attn.weight", vec![d, 3 * d]),
            ("attn.c_attn.bias", vec![3 * d]),
            ("attn.c_proj.weight", vec![d, d]),
            ("attn.c_proj.bias", vec![d]),
            ("ln_2.weight", vec![d]),
            ("ln_2.bias", vec![d]),
            ("mlp.c_fc.weight", vec![d, d_mlp]),
            ("mlp.c_fc.bias", vec![d_mlp]),
            ("mlp.c_proj.weight", vec![d_mlp, d]),
            ("mlp.c_proj.bias", vec![d]),
        ] {
            tensors.push((format!("h.{i}.{name}"), shape));
        }
    }
    tensors.push(("ln_f.weight".into(), vec![d]));
    tensors.push(("ln_f.bias".into(), vec![d]));

    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * 4;
        header.insert(
            format!("transformer.{name}"),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let file = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    out.write_all(header.as_bytes()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let is_gain =
            name.ends_with("ln_1.weight") || name.ends_with("ln_2.weight") || name == "ln_f.weight";
        for _ in 0..n {
            let x: f32 = if is_gain {
                1.0
            } else {
                rng.random_range(-0.04..0.04)
            };
            out.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    out.flush().unwrap();
}
