//! The intervention points: a hook that edits nothing changes nothing (bit for bit), and each
//! hook point is really applied, checked against models whose weights were edited to the same
//! effect (written to a tempdir) or against a hand computation from the stored weights.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use circuit::model::{
    ComponentOutputs, ForwardOptions, ForwardOutput, HeadInput, Interventions, Model,
    NoInterventions,
};
use ndarray::{
    s, Array1, Array2, Array3, ArrayView3, ArrayView4, ArrayViewMut3, ArrayViewMut4, Axis,
};
use safetensors::{Dtype, SafeTensors};

const PROMPTS: [&str; 3] = ["The cat sat on the mat", "A", "Tom and Lily"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn prompts(model: &Model) -> Vec<Vec<u32>> {
    PROMPTS
        .iter()
        .map(|p| model.encode_prompt(p).unwrap())
        .collect()
}

fn run(model: &Model, hooks: &dyn Interventions, cache: bool) -> ForwardOutput {
    let options = ForwardOptions {
        all_logits: true,
        cache,
    };
    model.forward(&prompts(model), &options, hooks).unwrap()
}

fn max_diff(a: &ndarray::ArrayViewD<f32>, b: &ndarray::ArrayViewD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Logits at real positions only (padding rows may legitimately differ).
fn assert_same_logits(label: &str, a: &ForwardOutput, b: &ForwardOutput, tolerance: f32) {
    for (i, &len) in a.lengths.iter().enumerate() {
        let d = max_diff(
            &a.logits.slice(s![i, ..len, ..]).into_dyn(),
            &b.logits.slice(s![i, ..len, ..]).into_dyn(),
        );
        assert!(
            d <= tolerance,
            "{label}: prompt {i} max |Δlogit| = {d:e} > {tolerance:e}"
        );
    }
}

/// A copy of the F32 fixture `name` with some tensors rewritten by `edit(tensor_name, values)`.
fn edited_model(name: &str, edit: impl Fn(&str, &mut [f32])) -> (tempfile::TempDir, Model) {
    let source = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut edited: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (tensor_name, view) in tensors.tensors() {
        assert_eq!(view.dtype(), Dtype::F32);
        let mut values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        edit(&tensor_name, &mut values);
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        edited.push((tensor_name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = edited
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let model = Model::load(dir.path()).unwrap();
    (dir, model)
}

/// Implements every hook without changing anything (and asks for component outputs).
struct EditNothing;
impl Interventions for EditNothing {
    fn edit_scores(&self, _: usize, scores: &mut ArrayViewMut4<f32>) {
        scores.mapv_inplace(|x| x);
    }
    fn edit_z(&self, _: usize, _: ArrayView4<f32>, _: ArrayView4<f32>, z: &mut ArrayViewMut4<f32>) {
        z.mapv_inplace(|x| x * 1.0);
    }
    fn edit_mlp_out(&self, _: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        mlp_out.mapv_inplace(|x| x + 0.0);
    }
    fn needs_component_outputs(&self) -> bool {
        true
    }
}

#[test]
fn editing_nothing_is_bit_identical() {
    for name in ["gpt2-tiny", "llama-gqa-bf16"] {
        let model = Model::load(&fixture(name)).unwrap();
        let plain = run(&model, &NoInterventions, false);
        let hooked = run(&model, &EditNothing, true);
        assert_eq!(plain.logits, hooked.logits, "{name}");
    }
}

/// Zeroes `z` of every head of one layer.
struct ZeroZ(usize);
impl Interventions for ZeroZ {
    fn edit_z(
        &self,
        layer: usize,
        _: ArrayView4<f32>,
        _: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        if layer == self.0 {
            z.fill(0.0);
        }
    }
}

#[test]
fn zeroing_z_equals_a_zero_output_matrix() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    let (_dir, no_wo) = edited_model("gpt2-tiny", |name, values| {
        if name.ends_with("h.1.attn.c_proj.weight") {
            values.fill(0.0);
        }
    });
    let hooked = run(&model, &ZeroZ(1), false);
    let reference = run(&no_wo, &NoInterventions, false);
    assert_same_logits("edit_z", &hooked, &reference, 1e-5);
    let plain = run(&model, &NoInterventions, false);
    assert!(
        max_diff(
            &plain.logits.view().into_dyn(),
            &hooked.logits.view().into_dyn()
        ) > 1e-2
    );
}

/// Knocks out every score of one layer: rows without a finite score read nothing.
struct KnockOutScores(usize);
impl Interventions for KnockOutScores {
    fn edit_scores(&self, layer: usize, scores: &mut ArrayViewMut4<f32>) {
        if layer == self.0 {
            scores.fill(f32::NEG_INFINITY);
        }
    }
}

#[test]
fn knocked_out_scores_give_zero_pattern_and_zero_z() {
    for name in ["gpt2-tiny", "llama-gqa-bf16"] {
        let model = Model::load(&fixture(name)).unwrap();
        let knocked = run(&model, &KnockOutScores(0), true);
        let zeroed = run(&model, &ZeroZ(0), false);
        assert_same_logits(name, &knocked, &zeroed, 0.0);
        let layer0 = &knocked.cache.as_ref().unwrap().layers[0];
        assert!(layer0.pattern.iter().all(|&p| p == 0.0));
        assert!(layer0.z.iter().all(|&z| z == 0.0));
        assert!(layer0.scores.iter().all(|&x| x == f32::NEG_INFINITY));
    }
}

struct ZeroMlp(usize);
impl Interventions for ZeroMlp {
    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        if layer == self.0 {
            mlp_out.fill(0.0);
        }
    }
}

#[test]
fn zeroing_mlp_out_equals_a_zero_mlp_projection() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    let (_dir, no_mlp) = edited_model("gpt2-tiny", |name, values| {
        if name.contains("h.2.mlp.c_proj.") {
            values.fill(0.0);
        }
    });
    let hooked = run(&model, &ZeroMlp(2), true);
    assert_same_logits(
        "edit_mlp_out",
        &hooked,
        &run(&no_mlp, &NoInterventions, false),
        1e-5,
    );
    assert!(hooked.cache.unwrap().layers[2]
        .mlp_out
        .iter()
        .all(|&x| x == 0.0));
}

/// The MLP of layer 0 reads the embedding alone (as if attention 0 wrote nothing).
struct MlpReadsEmbedding;
impl Interventions for MlpReadsEmbedding {
    fn needs_component_outputs(&self) -> bool {
        true
    }
    fn mlp_input(
        &self,
        layer: usize,
        _: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        (layer == 0).then(|| outputs.embed.to_owned())
    }
}

#[test]
fn mlp_input_is_what_the_mlp_reads() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    // With attention 0 writing nothing at all, MLP 0 reads exactly the embedding.
    let (_dir, no_attn0) = edited_model("gpt2-tiny", |name, values| {
        if name.contains("h.0.attn.c_proj.") {
            values.fill(0.0);
        }
    });
    let hooked = run(&model, &MlpReadsEmbedding, true);
    let reference = run(&no_attn0, &NoInterventions, true);
    let (a, b) = (
        &hooked.cache.unwrap().layers[0],
        &reference.cache.unwrap().layers[0],
    );
    for (i, &len) in hooked.lengths.iter().enumerate() {
        let d = max_diff(
            &a.mlp_out.slice(s![i, ..len, ..]).into_dyn(),
            &b.mlp_out.slice(s![i, ..len, ..]).into_dyn(),
        );
        assert!(d <= 1e-5, "prompt {i}: {d:e}");
    }
    // ... while the residual stream itself still carries attention 0's output.
    assert!(
        max_diff(
            &a.resid_mid.view().into_dyn(),
            &b.resid_mid.view().into_dyn()
        ) > 1e-2
    );
}

struct UnembedReadsEmbedding;
impl Interventions for UnembedReadsEmbedding {
    fn unembed_input(&self, _: ArrayView3<f32>, outputs: &ComponentOutputs) -> Option<Array3<f32>> {
        Some(outputs.embed.to_owned())
    }
}

#[test]
fn unembed_input_is_what_the_unembedding_reads() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    // A model whose every block writes nothing: the logits read the embedding.
    let (_dir, empty) = edited_model("gpt2-tiny", |name, values| {
        if name.contains(".c_proj.") {
            values.fill(0.0);
        }
    });
    let hooked = run(&model, &UnembedReadsEmbedding, false);
    assert_same_logits(
        "unembed_input",
        &hooked,
        &run(&empty, &NoInterventions, false),
        1e-5,
    );
}

/// Records how well the component outputs rebuild `resid_pre` of the last layer, and gives
/// head 3 of layer 1 the embedding alone as its query input.
#[derive(Default)]
struct ComponentProbe {
    rebuild_error: Mutex<Option<f32>>,
}
impl Interventions for ComponentProbe {
    fn needs_component_outputs(&self) -> bool {
        true
    }
    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: HeadInput,
        resid_pre: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        if layer == 2 && head == 0 && which == HeadInput::Q {
            let mut rebuilt = outputs.embed.to_owned();
            for l in 0..layer {
                rebuilt += &outputs.head_out[l].sum_axis(Axis(2));
                rebuilt += &outputs.attn_bias[l];
                rebuilt += &outputs.mlp_out[l];
            }
            let error = max_diff(&rebuilt.view().into_dyn(), &resid_pre.into_dyn());
            *self.rebuild_error.lock().unwrap() = Some(error);
        }
        (layer == 1 && head == 3 && which == HeadInput::Q).then(|| outputs.embed.to_owned())
    }
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn head_input_replaces_one_heads_query_input() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    let probe = ComponentProbe::default();
    let hooked = run(&model, &probe, true);
    let plain = run(&model, &NoInterventions, true);
    let error = probe
        .rebuild_error
        .lock()
        .unwrap()
        .expect("hook called for layer 2");
    assert!(error < 1e-4, "components rebuild resid_pre to {error:e}");

    // By hand from the stored weights: q of head 3 = LN_1(embed) · W_q[:, head 3] + b.
    let bytes = std::fs::read(fixture("gpt2-tiny/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |n: &str| read_f32(st.tensor(&format!("transformer.h.1.{n}")).unwrap().data());
    let (d, d_head) = (80, 16);
    let (ln_w, ln_b) = (
        Array1::from(get("ln_1.weight")),
        Array1::from(get("ln_1.bias")),
    );
    let w = Array2::from_shape_vec((d, 3 * d), get("attn.c_attn.weight")).unwrap();
    let b = Array1::from(get("attn.c_attn.bias"));
    let (hc, pc) = (hooked.cache.unwrap(), plain.cache.unwrap());
    for (i, &len) in hooked.lengths.iter().enumerate() {
        for t in 0..len {
            let x = hc.embed.slice(s![i, t, ..]);
            let mean = x.mean().unwrap();
            let var = x.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
            let normed = (x.mapv(|v| (v - mean) / (var + 1e-5).sqrt())) * &ln_w + &ln_b;
            let cols = 3 * d_head..4 * d_head;
            let q = normed.dot(&w.slice(s![.., cols.clone()])) + b.slice(s![cols]);
            let got = hc.layers[1].q.slice(s![i, t, 3, ..]);
            let d = max_diff(&got.into_dyn(), &q.view().into_dyn());
            assert!(d < 1e-4, "prompt {i} position {t}: {d:e}");
            // Every other head's query is untouched.
            for h in (0..5).filter(|&h| h != 3) {
                assert_eq!(
                    hc.layers[1].q.slice(s![i, t, h, ..]),
                    pc.layers[1].q.slice(s![i, t, h, ..])
                );
            }
        }
    }
}

/// Gives query head 1 of layer 1 (GQA: shares its key/value head with head 0... 2) the
/// embedding alone as its key input.
struct KeyFromEmbedding;
impl Interventions for KeyFromEmbedding {
    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: HeadInput,
        _: ArrayView3<f32>,
        outputs: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        (layer == 1 && head == 1 && which == HeadInput::K).then(|| outputs.embed.to_owned())
    }
}

#[test]
fn head_input_under_gqa_edits_only_that_query_head() {
    let model = Model::load(&fixture("llama-gqa-bf16")).unwrap();
    let hooked = run(&model, &KeyFromEmbedding, true).cache.unwrap();
    let plain = run(&model, &NoInterventions, true).cache.unwrap();
    let pattern = |c: &circuit::model::ActivationCache, h: usize| {
        c.layers[1].pattern.slice(s![0, h, .., ..]).to_owned()
    };
    for h in 0..6 {
        let d = max_diff(
            &pattern(&hooked, h).view().into_dyn(),
            &pattern(&plain, h).view().into_dyn(),
        );
        if h == 1 {
            assert!(d > 1e-3, "head 1's pattern must change");
        } else {
            assert_eq!(d, 0.0, "head {h}'s pattern must not change");
        }
    }
}

#[test]
fn batched_cache_equals_per_prompt_cache() {
    for name in ["gpt2-tiny", "llama-gqa-bf16"] {
        let model = Model::load(&fixture(name)).unwrap();
        let ids = prompts(&model);
        let options = ForwardOptions {
            all_logits: false,
            cache: true,
        };
        let batch = model.forward(&ids, &options, &NoInterventions).unwrap();
        let bc = batch.cache.as_ref().unwrap();
        for (i, prompt) in ids.iter().enumerate() {
            let alone = model
                .forward(std::slice::from_ref(prompt), &options, &NoInterventions)
                .unwrap();
            let t = prompt.len();
            let d = max_diff(
                &batch.logits.slice(s![i, .., ..]).into_dyn(),
                &alone.logits.slice(s![0, .., ..]).into_dyn(),
            );
            assert!(d <= 1e-5, "{name} prompt {i} END logits {d:e}");
            let ac = alone.cache.as_ref().unwrap();
            for (l, (bl, al)) in bc.layers.iter().zip(&ac.layers).enumerate() {
                let checks = [
                    (
                        "resid_post",
                        max_diff(
                            &bl.resid_post.slice(s![i, ..t, ..]).into_dyn(),
                            &al.resid_post.slice(s![0, .., ..]).into_dyn(),
                        ),
                    ),
                    (
                        "pattern",
                        max_diff(
                            &bl.pattern.slice(s![i, .., ..t, ..t]).into_dyn(),
                            &al.pattern.slice(s![0, .., .., ..]).into_dyn(),
                        ),
                    ),
                    (
                        "z",
                        max_diff(
                            &bl.z.slice(s![i, ..t, .., ..]).into_dyn(),
                            &al.z.slice(s![0, .., .., ..]).into_dyn(),
                        ),
                    ),
                    (
                        "head_out",
                        max_diff(
                            &bl.head_out.slice(s![i, ..t, .., ..]).into_dyn(),
                            &al.head_out.slice(s![0, .., .., ..]).into_dyn(),
                        ),
                    ),
                ];
                for (what, d) in checks {
                    assert!(d <= 1e-5, "{name} prompt {i} layer {l} {what}: {d:e}");
                }
            }
        }
    }
}

#[test]
fn cache_quantities_add_up() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    let out = run(&model, &NoInterventions, true);
    let seq = *out.lengths.iter().max().unwrap();
    let cache = out.cache.unwrap();
    let bytes = std::fs::read(fixture("gpt2-tiny/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (l, layer) in cache.layers.iter().enumerate() {
        let bias = Array1::from(read_f32(
            st.tensor(&format!("transformer.h.{l}.attn.c_proj.bias"))
                .unwrap()
                .data(),
        ));
        let rebuilt = layer.head_out.sum_axis(Axis(2)) + &bias;
        assert!(
            max_diff(
                &rebuilt.view().into_dyn(),
                &layer.attn_out.view().into_dyn()
            ) < 1e-5
        );
        let mid = &layer.resid_pre + &layer.attn_out;
        assert!(max_diff(&mid.view().into_dyn(), &layer.resid_mid.view().into_dyn()) < 1e-6);
        let post = &layer.resid_mid + &layer.mlp_out;
        assert!(max_diff(&post.view().into_dyn(), &layer.resid_post.view().into_dyn()) < 1e-6);
        assert_eq!(layer.q.dim(), (3, seq, 5, 16));
        assert_eq!(layer.scores.dim(), (3, 5, seq, seq));
    }
    let last = cache.layers.last().unwrap();
    assert_eq!(last.resid_post, cache.resid_final);
}

#[test]
fn the_cache_keeps_the_values_by_query_head_the_attention_used() {
    let model = Model::load(&fixture("llama-gqa-bf16")).unwrap();
    let (n_heads, n_kv) = (model.config.n_heads, model.config.n_kv_heads);
    assert!(n_heads > n_kv, "the fixture shares key/value heads");
    let cache = run(&model, &NoInterventions, true).cache.unwrap();
    for layer in &cache.layers {
        for h in 0..n_heads {
            assert_eq!(
                layer.v_by_query_head.slice(s![.., .., h, ..]),
                layer.v.slice(s![.., .., h / (n_heads / n_kv), ..]),
            );
        }
    }
}

/// Knocks out key 0 for every later query of one layer's heads.
struct KnockOutFirstKey(usize);
impl Interventions for KnockOutFirstKey {
    fn edit_scores(&self, layer: usize, scores: &mut ArrayViewMut4<f32>) {
        if layer == self.0 {
            let queries = scores.dim().2;
            scores
                .slice_mut(s![.., .., 1..queries, 0])
                .fill(f32::NEG_INFINITY);
        }
    }
}

/// Gemma 2 soft-caps its scores (`c·tanh(s/c)`, c = 4 in the fixture) before the hook sees them,
/// so a knocked-out pair is `−∞` after the cap and reads nothing; were the cap applied after the
/// hook, `c·tanh(−∞) = −4` would be a finite score with a share of the softmax. The other keys
/// renormalize over the capped clean scores.
#[test]
fn gemma2_knockout_is_applied_after_the_soft_cap() {
    let model = Model::load(&fixture("gemma2-bf16")).unwrap();
    let cap = model.config.scaling.attn_logit_softcap.unwrap();
    let clean = run(&model, &NoInterventions, true);
    let knocked = run(&model, &KnockOutFirstKey(1), true);
    let (clean, knocked) = (
        &clean.cache.as_ref().unwrap().layers[1],
        &knocked.cache.as_ref().unwrap().layers[1],
    );
    let lengths = prompts(&model).iter().map(Vec::len).collect::<Vec<_>>();
    let mut compared = 0;
    for (b, &len) in lengths.iter().enumerate() {
        for h in 0..model.config.n_heads {
            for q in 1..len {
                assert_eq!(knocked.pattern[[b, h, q, 0]], 0.0);
                assert_eq!(knocked.scores[[b, h, q, 0]], f32::NEG_INFINITY);
                let kept: Vec<f64> = (1..=q).map(|k| clean.scores[[b, h, q, k]] as f64).collect();
                assert!(kept.iter().all(|s| s.abs() <= cap as f64), "capped scores");
                let max = kept.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = kept.iter().map(|s| (s - max).exp()).sum();
                for (i, s) in kept.iter().enumerate() {
                    let want = (s - max).exp() / sum;
                    let got = knocked.pattern[[b, h, q, i + 1]] as f64;
                    assert!(
                        (got - want).abs() < 1e-6,
                        "({b}, {h}, {q}, {}): {got} vs {want}",
                        i + 1
                    );
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 20);
}
