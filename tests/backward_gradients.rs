//! The whole-model backward (`circuit::model::backward::gradients`) against central finite
//! differences of the engine's own forward, nudged through its intervention points, on the
//! built-in model, a random GPT-2, a grouped-query Llama and the pretrained stories260K; and
//! against a torch autograd reference (`scripts/grad_reference.py`, float64).

use std::path::{Path, PathBuf};

use circuit::measure::{mean, per_prompt_metrics, Targets, ALL_METRICS};
use circuit::model::backward::{
    gradients, EndLogits, GradientOptions, Gradients, HeadInputGradients, HeadInputSink, Objective,
};
use circuit::model::{
    ComponentOutputs, ForwardOptions, HeadInput, Interventions, Model, ModelSource,
    ResidualTopology,
};
use ndarray::{
    Array, Array2, Array3, ArrayD, ArrayView3, ArrayView4, ArrayViewD, ArrayViewMut3,
    ArrayViewMut4, Axis, Ix3, Ix4, IxDyn,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn stories() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K")
}

const WITH_HEAD_INPUTS: GradientOptions = GradientOptions {
    head_inputs: true,
    head_input_sink: None,
    prompts_in_mean: None,
};

/// Where a nudge is added.
#[derive(Clone, Copy, Debug)]
enum Site {
    Z(usize),
    MlpOut(usize),
    MlpIn(usize),
    HeadInput(usize, usize, HeadInput),
    ResidFinal,
}

/// Adds `scale · direction` at one site of the forward.
struct Nudge<'a> {
    site: Site,
    direction: &'a ArrayD<f32>,
    scale: f32,
}

impl Nudge<'_> {
    fn add(&self, x: ArrayView3<f32>) -> Array3<f32> {
        let d = self.direction.view().into_dimensionality::<Ix3>().unwrap();
        &x + &(&d * self.scale)
    }
}

impl Interventions for Nudge<'_> {
    fn edit_z(
        &self,
        layer: usize,
        _: ArrayView4<f32>,
        _: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        if let Site::Z(l) = self.site {
            if l == layer {
                let d = self.direction.view().into_dimensionality::<Ix4>().unwrap();
                z.scaled_add(self.scale, &d);
            }
        }
    }
    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        if let Site::MlpOut(l) = self.site {
            if l == layer {
                let d = self.direction.view().into_dimensionality::<Ix3>().unwrap();
                mlp_out.scaled_add(self.scale, &d);
            }
        }
    }
    fn mlp_input(
        &self,
        layer: usize,
        resid_mid: ArrayView3<f32>,
        _: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        match self.site {
            Site::MlpIn(l) if l == layer => Some(self.add(resid_mid)),
            _ => None,
        }
    }
    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: HeadInput,
        resid_pre: ArrayView3<f32>,
        _: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        match self.site {
            Site::HeadInput(l, h, w) if (l, h, w) == (layer, head, which) => {
                Some(self.add(resid_pre))
            }
            _ => None,
        }
    }
    fn unembed_input(
        &self,
        resid_final: ArrayView3<f32>,
        _: &ComponentOutputs,
    ) -> Option<Array3<f32>> {
        match self.site {
            Site::ResidFinal => Some(self.add(resid_final)),
            _ => None,
        }
    }
}

/// The gradient the backward reports for a site, as a dynamic array.
fn gradient_at(g: &Gradients, site: Site) -> ArrayD<f32> {
    let head = |a: &ndarray::Array4<f32>, h: usize| a.index_axis(Axis(2), h).to_owned().into_dyn();
    match site {
        Site::Z(l) => g.layers[l].z.clone().into_dyn(),
        Site::MlpOut(l) => g.layers[l].mlp_out.clone().into_dyn(),
        Site::MlpIn(l) => g.layers[l].mlp_in.clone().into_dyn(),
        Site::HeadInput(l, h, which) => {
            let inputs = g.layers[l].head_inputs.as_ref().unwrap();
            match which {
                HeadInput::Q => head(&inputs.q, h),
                HeadInput::K => head(&inputs.k, h),
                HeadInput::V => head(&inputs.v, h),
            }
        }
        Site::ResidFinal => g.resid_final.clone().into_dyn(),
    }
}

struct Case<'a> {
    model: &'a Model,
    tokens: Vec<Vec<u32>>,
    targets: Vec<(u32, u32)>,
}

impl Case<'_> {
    fn new(model: &Model, seed: u64) -> Case<'_> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vocab = model.tokenizer.vocab_size() as u32;
        // Unequal lengths: padding rows must get (and contribute) nothing.
        let tokens = [6usize, 3, 5]
            .iter()
            .map(|&n| (0..n).map(|_| rng.random_range(0..vocab)).collect())
            .collect();
        let targets = (0..3)
            .map(|_| (rng.random_range(0..vocab), rng.random_range(0..vocab)))
            .collect();
        Case {
            model,
            tokens,
            targets,
        }
    }

    /// The mean metric over prompts of the engine's forward under `hooks`, in f64 as the
    /// measure stage computes it.
    fn metric(&self, name: &str, full: &Array2<f32>, hooks: &dyn Interventions) -> f64 {
        let options = ForwardOptions::default();
        let out = self.model.forward(&self.tokens, &options, hooks).unwrap();
        let end = out.logits.index_axis(Axis(1), 0).to_owned(); // (B, V)
        let targets: Vec<Targets> = (self.targets.iter())
            .map(|&(answer, distractor)| Targets { answer, distractor })
            .collect();
        let metric = ALL_METRICS
            .into_iter()
            .find(|&m| circuit::measure::metric_name(m) == name)
            .unwrap();
        mean(&per_prompt_metrics(end.view(), full.view(), &targets)[&metric])
    }
}

/// Directional derivatives along random directions at every site, against central
/// differences of the engine's forward (f32, so a step of 1e-2 of each activation's size).
/// Returns the largest relative error (f32 rounding in the forward limits it to ~1e-2).
fn check_against_finite_differences(label: &str, model: &Model, name: &str, seed: u64) -> f64 {
    let case = Case::new(model, seed);
    // For `kl`, a "full" distribution other than this run's (at its own logits kl's gradient
    // is zero): the clean END logits halved.
    let clean = model
        .forward(
            &case.tokens,
            &ForwardOptions::default(),
            &circuit::model::NoInterventions,
        )
        .unwrap();
    let full = clean.logits.index_axis(Axis(1), 0).mapv(|x| 0.5 * x);
    let objective = Objective::from_metric_name(name, Some(full.view())).unwrap();
    let grads = gradients(
        model,
        &case.tokens,
        &case.targets,
        objective,
        WITH_HEAD_INPUTS,
    )
    .unwrap();
    // The gradients' forward is the clean one: every END logit, or under `logit_diff` the two it
    // reads, computed without the unembedding's product (so equal to f32 rounding).
    let clean_end = clean.logits.index_axis(Axis(1), 0); // (B, V)
    match &grads.logits {
        EndLogits::Full(logits) => {
            assert_ne!(name, "logit_diff", "logit_diff reads two logits a prompt");
            assert_eq!(logits, &clean_end);
        }
        EndLogits::AnswerAndDistractor(pair) => {
            assert_eq!(name, "logit_diff", "{name} reads every logit");
            for (b, &(answer, distractor)) in case.targets.iter().enumerate() {
                for (i, token) in [answer, distractor].into_iter().enumerate() {
                    let full = clean_end[[b, token as usize]];
                    assert!(
                        (pair[[b, i]] - full).abs() <= 1e-5 * (1.0 + full.abs()),
                        "{label} prompt {b}: logit {} of the pass, {full} of the forward",
                        pair[[b, i]]
                    );
                }
            }
        }
    }

    let config = &model.config;
    let mut sites = vec![Site::ResidFinal];
    for l in 0..config.n_layers {
        sites.extend([Site::Z(l), Site::MlpOut(l), Site::MlpIn(l)]);
        for h in 0..config.n_heads {
            for which in [HeadInput::Q, HeadInput::K, HeadInput::V] {
                sites.push(Site::HeadInput(l, h, which));
            }
        }
    }
    // Each direction is scaled to the size of the activation it nudges (random models keep
    // theirs at the 0.02 of their initialization).
    let cache = model
        .forward(
            &case.tokens,
            &ForwardOptions {
                all_logits: false,
                cache: true,
            },
            &circuit::model::NoInterventions,
        )
        .unwrap()
        .cache
        .unwrap();
    let rms = |a: ndarray::ArrayViewD<f32>| {
        (a.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / a.len() as f64).sqrt()
    };
    let activation_size = |site: Site| match site {
        Site::Z(l) => rms(cache.layers[l].z.view().into_dyn()),
        Site::MlpOut(l) => rms(cache.layers[l].mlp_out.view().into_dyn()),
        // The stream the MLP reads: resid_pre under the parallel wiring (GPT-NeoX).
        Site::MlpIn(l) => match config.residual {
            ResidualTopology::Sequential | ResidualTopology::SequentialPostNorm => {
                rms(cache.layers[l].resid_mid.view().into_dyn())
            }
            ResidualTopology::Parallel => rms(cache.layers[l].resid_pre.view().into_dyn()),
        },
        Site::HeadInput(l, ..) => rms(cache.layers[l].resid_pre.view().into_dyn()),
        Site::ResidFinal => rms(cache.resid_final.view().into_dyn()),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 1);
    let mut worst: (f64, String) = (0.0, String::new());
    let mut scale_of_derivatives = 0.0f64;
    let mut results = Vec::new();
    for site in sites {
        let gradient = gradient_at(&grads, site);
        let size = activation_size(site) as f32;
        let direction: ArrayD<f32> = Array::from_shape_fn(IxDyn(gradient.shape()), |_| {
            size * rng.random_range(-1.0f32..1.0)
        });
        let analytic: f64 = (gradient.iter().zip(&direction))
            .map(|(&g, &d)| g as f64 * d as f64)
            .sum();
        let value = |scale: f32| {
            case.metric(
                name,
                &full,
                &Nudge {
                    site,
                    direction: &direction,
                    scale,
                },
            )
        };
        // Central differences at steps h and h/2, extrapolated (Richardson) to cancel the h²
        // term: (4·D(h/2) − D(h)) / 3.
        let central = |h: f32| (value(h) - value(-h)) / (2.0 * h as f64);
        let step = 1e-1f32;
        let numeric = (4.0 * central(step / 2.0) - central(step)) / 3.0;
        scale_of_derivatives = scale_of_derivatives.max(numeric.abs());
        results.push((site, analytic, numeric));
    }
    for (site, analytic, numeric) in results {
        // Relative to the larger of the derivative itself and 1% of the largest one at any site
        // (f32 rounding in the forward bounds what a tiny derivative can be checked to).
        let error = (analytic - numeric).abs()
            / numeric
                .abs()
                .max(analytic.abs())
                .max(1e-2 * scale_of_derivatives);
        if error > worst.0 {
            worst = (
                error,
                format!("{site:?}: backward {analytic:.6e} vs finite differences {numeric:.6e}"),
            );
        }
    }
    eprintln!(
        "{label} {name}: max relative error {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 2e-2,
        "{label} {name}: relative error {:.3e} at {}",
        worst.0,
        worst.1
    );
    worst.0
}

#[test]
fn builtin_model_gradients_match_finite_differences_for_every_metric() {
    let model = Model::open(&ModelSource::Builtin("toy-seqcont".to_string())).unwrap();
    for (seed, metric) in ["logit_diff", "prob", "logprob", "kl"]
        .into_iter()
        .enumerate()
    {
        check_against_finite_differences("toy-seqcont", &model, metric, seed as u64 * 10);
    }
}

#[test]
fn random_gpt2_gradients_match_finite_differences() {
    let model = Model::load(&fixture("gpt2-tiny")).unwrap();
    check_against_finite_differences("gpt2-tiny", &model, "logit_diff", 100);
}

#[test]
fn grouped_query_llama_gradients_match_finite_differences() {
    let model = Model::load(&fixture("llama-gqa-bf16")).unwrap();
    check_against_finite_differences("llama-gqa-bf16", &model, "logit_diff", 200);
    check_against_finite_differences("llama-gqa-bf16", &model, "logprob", 210);
}

/// The parallel wiring, path-edge inputs included (`mlp_input` reads `resid_pre` there). The
/// sequential GPT-NeoX fixture is checked against torch autograd only: its random weights are
/// nonlinear enough at this check's step (0.1 of each activation's size) that central
/// differences are off by ~2% at `Z(0)`, where autograd agrees to 7e-7.
#[test]
fn gpt_neox_parallel_gradients_match_finite_differences() {
    let model = Model::load(&fixture("neox-parallel-f16")).unwrap();
    check_against_finite_differences("neox-parallel-f16", &model, "logit_diff", 400);
}

#[test]
fn stories260k_gradients_match_finite_differences() {
    let model = Model::load(&stories()).unwrap();
    check_against_finite_differences("stories260K", &model, "logit_diff", 300);
}

// ---- against torch autograd ------------------------------------------------------------------

/// One array of the autograd fixture, as f64 (stored as f32, i64 or f64).
fn fixture_array(tensors: &safetensors::SafeTensors, name: &str) -> ArrayD<f64> {
    let view = tensors
        .tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let bytes = view.data();
    let values: Vec<f64> = match view.dtype() {
        safetensors::Dtype::F32 => (bytes.chunks_exact(4))
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        safetensors::Dtype::F64 => (bytes.chunks_exact(8))
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => (bytes.chunks_exact(8))
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("{name}: dtype {other:?}"),
    };
    ArrayD::from_shape_vec(IxDyn(view.shape()), values).unwrap()
}

/// Compares the whole-model gradients with `tests/fixtures/gradients/{name}.safetensors`
/// (scripts/grad_reference.py). Returns the largest relative error over the quantities, each
/// relative to the largest reference entry of that quantity.
fn check_against_autograd(name: &str, model: &Model) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gradients")
        .join(format!("{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let n_prompts = (0..)
        .take_while(|p| tensors.tensor(&format!("p{p}.ids")).is_ok())
        .count();
    let as_ids = |a: ArrayD<f64>| a.iter().map(|&x| x as u32).collect::<Vec<u32>>();
    let tokens: Vec<Vec<u32>> = (0..n_prompts)
        .map(|p| as_ids(fixture_array(&tensors, &format!("p{p}.ids"))))
        .collect();
    let targets: Vec<(u32, u32)> = (0..n_prompts)
        .map(|p| {
            let t = as_ids(fixture_array(&tensors, &format!("p{p}.targets")));
            (t[0], t[1])
        })
        .collect();
    let grads = gradients(
        model,
        &tokens,
        &targets,
        Objective::LogitDiff,
        WITH_HEAD_INPUTS,
    )
    .unwrap();

    let mut worst = 0.0f64;
    let quantities = [
        "z",
        "pattern",
        "q_input",
        "k_input",
        "v_input",
        "mlp_in",
        "mlp_out",
        "resid_pre",
        "resid_final",
    ];
    for quantity in quantities {
        let (mut max_difference, mut max_reference) = (0.0f64, 0.0f64);
        for (p, ids) in tokens.iter().enumerate() {
            let reference = fixture_array(&tensors, &format!("p{p}.{quantity}"));
            let t = ids.len();
            // Prompt p's real rows: axis 0 is the prompt; the pattern's query and key axes are
            // 1 and 2 after it, every other array's position axis is 0.
            let real_rows = |a: ArrayViewD<f32>| {
                let mut a = a.index_axis_move(Axis(0), p);
                let axes: &[usize] = if quantity == "pattern" { &[1, 2] } else { &[0] };
                for &axis in axes {
                    a.slice_axis_inplace(Axis(axis), (0..t).into());
                }
                a.to_owned()
            };
            let ours = if quantity == "resid_final" {
                real_rows(grads.resid_final.view().into_dyn())
            } else {
                let per_layer: Vec<ArrayD<f32>> = (grads.layers.iter())
                    .map(|g| {
                        let inputs = g.head_inputs.as_ref().unwrap();
                        real_rows(match quantity {
                            "z" => g.z.view().into_dyn(),
                            "pattern" => g.pattern.view().into_dyn(),
                            "q_input" => inputs.q.view().into_dyn(),
                            "k_input" => inputs.k.view().into_dyn(),
                            "v_input" => inputs.v.view().into_dyn(),
                            "mlp_in" => g.mlp_in.view().into_dyn(),
                            "mlp_out" => g.mlp_out.view().into_dyn(),
                            _ => g.resid_pre.view().into_dyn(),
                        })
                    })
                    .collect();
                let views: Vec<_> = per_layer.iter().map(|a| a.view()).collect();
                ndarray::stack(Axis(0), &views).unwrap()
            };
            assert_eq!(
                ours.shape(),
                reference.shape(),
                "{name} {quantity} prompt {p}"
            );
            for (&a, &r) in ours.iter().zip(&reference) {
                max_difference = max_difference.max((a as f64 - r).abs());
                max_reference = max_reference.max(r.abs());
            }
        }
        let error = max_difference / max_reference;
        eprintln!("{name} {quantity}: max |Δ| / max |torch| = {error:.2e} (max |torch| {max_reference:.3e})");
        assert!(
            max_reference > 0.0,
            "{name} {quantity}: an all-zero reference checks nothing"
        );
        assert!(
            error < 2e-5,
            "{name} {quantity}: relative error {error:.3e} against torch autograd"
        );
        worst = worst.max(error);
    }
    // And the metric itself, on the END logits the gradients were taken at.
    for (p, &(answer, distractor)) in targets.iter().enumerate() {
        let (answer, distractor) = grads.logits.answer_and_distractor(p, (answer, distractor));
        let value = answer as f64 - distractor as f64;
        let reference = fixture_array(&tensors, &format!("p{p}.metric"))[[0]];
        assert!(
            (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
            "{name} prompt {p}: metric {value} vs {reference}"
        );
    }
    worst
}

#[test]
fn random_gpt2_gradients_match_torch_autograd() {
    check_against_autograd("gpt2-tiny", &Model::load(&fixture("gpt2-tiny")).unwrap());
}

#[test]
fn grouped_query_llama_gradients_match_torch_autograd() {
    check_against_autograd(
        "llama-gqa-bf16",
        &Model::load(&fixture("llama-gqa-bf16")).unwrap(),
    );
}

#[test]
fn gpt_neox_parallel_gradients_match_torch_autograd() {
    let name = "neox-parallel-f16";
    check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
}

#[test]
fn gpt_neox_sequential_gradients_match_torch_autograd() {
    let name = "neox-sequential-bf16";
    check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
}

#[test]
fn qwen2_gradients_match_torch_autograd() {
    let name = "qwen2-tied-f32";
    check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
}

#[test]
fn mistral_gradients_match_torch_autograd() {
    let name = "mistral-head-dim-bf16";
    check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
}

/// Sliding windows (Mistral: 3 keys on every layer; Qwen2: 4 keys on layers 1 and 2) on
/// prompts longer than the windows: the backward reads the forward's pattern, zero outside
/// the window, and torch's reference masks the same keys (checked against transformers).
#[test]
fn sliding_window_gradients_match_torch_autograd() {
    for name in ["mistral-window-f32", "qwen2-window-f16"] {
        check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
    }
}

/// Qwen3: through each head's q and k RMSNorm (random gains) before rotary, with head_dim 12
/// ≠ 40 / 4, 4 query heads on 2 key/value heads, and a 3-key window binding on layers 1 and 2
/// (the reference's prompts are the long ones). Without the norms' backward `q_input` and
/// `k_input` (and every gradient below layer 2) are off by far more than the tolerance.
#[test]
fn qwen3_gradients_through_its_per_head_qk_norms_match_torch_autograd() {
    let name = "qwen3-bf16";
    let model = Model::load(&fixture(name)).unwrap();
    assert!(model.config.has_qk_norm());
    check_against_autograd(name, &model);
}

#[test]
fn qwen3_gradients_match_finite_differences() {
    let model = Model::load(&fixture("qwen3-bf16")).unwrap();
    check_against_finite_differences("qwen3-bf16", &model, "logit_diff", 500);
}

/// Gemma 2: through the post-norms, both soft caps, GeGLU and the scaled embedding. (Checked
/// against autograd only, like the sequential GPT-NeoX fixture: at the finite-difference check's
/// step, 0.1 of each activation's size, its soft caps and post-norms make central differences
/// 4% off at `Z(0)`, where autograd agrees to 2e-6.)
#[test]
fn gemma2_gradients_match_torch_autograd() {
    let name = "gemma2-bf16";
    check_against_autograd(name, &Model::load(&fixture(name)).unwrap());
}

#[test]
fn stories260k_gradients_match_torch_autograd() {
    check_against_autograd("stories260K", &Model::load(&stories()).unwrap());
}

// ---- structure ------------------------------------------------------------------------------

#[test]
fn head_input_gradients_add_up_to_the_residual_gradient_and_padding_gets_none() {
    let model = Model::load(&stories()).unwrap(); // grouped-query: 8 query heads on 4 kv heads
    let case = Case::new(&model, 400);
    let grads = gradients(
        &model,
        &case.tokens,
        &case.targets,
        Objective::Logprob,
        WITH_HEAD_INPUTS,
    )
    .unwrap();
    for (l, g) in grads.layers.iter().enumerate() {
        // resid_pre feeds the skip connection (= ∂M/∂resid_mid = mlp_out + mlp_in) and every
        // head's q, k and v.
        let inputs = g.head_inputs.as_ref().unwrap();
        let heads = (&inputs.q + &inputs.k + &inputs.v).sum_axis(Axis(2)); // (B, T, D)
        let rebuilt = &g.mlp_out + &g.mlp_in + &heads;
        let scale = g.resid_pre.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let difference = (&rebuilt - &g.resid_pre)
            .iter()
            .fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            scale > 0.0 && difference <= 1e-5 * scale,
            "layer {l}: {difference} of {scale}"
        );
        for (b, &len) in grads.lengths.iter().enumerate() {
            let padding = [
                g.resid_pre
                    .slice(ndarray::s![b, len.., ..])
                    .to_owned()
                    .into_dyn(),
                g.z.slice(ndarray::s![b, len.., .., ..])
                    .to_owned()
                    .into_dyn(),
                inputs
                    .k
                    .slice(ndarray::s![b, len.., .., ..])
                    .to_owned()
                    .into_dyn(),
            ];
            assert!(
                padding.iter().all(|a| a.iter().all(|&x| x == 0.0)),
                "layer {l} prompt {b}"
            );
        }
    }
    // Without head inputs, the rest is the same to f32 rounding: with them, the attention's
    // share of ∂M/∂resid_pre is their sum, without them one product over every head.
    let lean = gradients(
        &model,
        &case.tokens,
        &case.targets,
        Objective::Logprob,
        GradientOptions::default(),
    )
    .unwrap();
    for layer in &lean.layers {
        assert!(layer.head_inputs.is_none());
    }
    assert_close_gradients_but_head_inputs(&lean, &grads);
}

/// Every gradient but the head inputs, by name.
fn gradients_but_head_inputs(g: &Gradients) -> Vec<(String, ndarray::ArrayViewD<'_, f32>)> {
    let mut all = vec![("resid_final".to_string(), g.resid_final.view().into_dyn())];
    for (l, layer) in g.layers.iter().enumerate() {
        all.push((format!("layer {l} z"), layer.z.view().into_dyn()));
        all.push((
            format!("layer {l} pattern"),
            layer.pattern.view().into_dyn(),
        ));
        all.push((format!("layer {l} mlp_in"), layer.mlp_in.view().into_dyn()));
        all.push((
            format!("layer {l} mlp_out"),
            layer.mlp_out.view().into_dyn(),
        ));
        all.push((
            format!("layer {l} resid_pre"),
            layer.resid_pre.view().into_dyn(),
        ));
    }
    all
}

/// Every gradient of `a` but the head inputs is `b`'s to 1e-5 of each array's largest value
/// (and not all zero).
fn assert_close_gradients_but_head_inputs(a: &Gradients, b: &Gradients) {
    assert_eq!(a.layers.len(), b.layers.len());
    for ((what, a), (_, b)) in gradients_but_head_inputs(a)
        .into_iter()
        .zip(gradients_but_head_inputs(b))
    {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let difference = (&a - &b).iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            scale > 0.0 && difference <= 1e-5 * scale,
            "{what}: {difference} of {scale}"
        );
    }
}

/// Every gradient of `a` but the head inputs is `b`'s, bit for bit.
fn assert_same_gradients_but_head_inputs(a: &Gradients, b: &Gradients) {
    assert_eq!(a.layers.len(), b.layers.len());
    for ((what, a), (_, b)) in gradients_but_head_inputs(a)
        .into_iter()
        .zip(gradients_but_head_inputs(b))
    {
        assert_eq!(a, b, "{what}");
    }
}

#[test]
fn bad_gradient_requests_are_coded_errors() {
    let model = Model::open(&ModelSource::Builtin("toy-seqcont".to_string())).unwrap();
    let code = |e: circuit::model::backward::GradientError| {
        miette::Diagnostic::code(&e).unwrap().to_string()
    };
    let tokens = vec![vec![1u32, 2, 3]];
    let options = GradientOptions::default();
    let err = gradients(&model, &tokens, &[], Objective::LogitDiff, options).unwrap_err();
    assert_eq!(code(err), "circuit::model::gradient_inputs");
    let err = gradients(
        &model,
        &tokens,
        &[(0, 1_000_000)],
        Objective::LogitDiff,
        options,
    )
    .unwrap_err();
    assert_eq!(code(err), "circuit::model::gradient_inputs");
    let wrong_shape = Array2::<f32>::zeros((2, 3));
    let kl = Objective::Kl {
        full_logits: wrong_shape.view(),
    };
    let err = gradients(&model, &tokens, &[(0, 1)], kl, options).unwrap_err();
    assert_eq!(code(err), "circuit::model::gradient_inputs");
    let err = Objective::from_metric_name("accuracy", None).unwrap_err();
    assert_eq!(code(err), "circuit::model::no_gradient");
    let err = gradients(&model, &[vec![]], &[(0, 1)], Objective::LogitDiff, options).unwrap_err();
    assert_eq!(code(err), "circuit::model::empty_prompt");
}

#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let model = Model::load(&stories()).unwrap();
    let case = Case::new(&model, 500);
    let run = || {
        gradients(
            &model,
            &case.tokens,
            &case.targets,
            Objective::LogitDiff,
            WITH_HEAD_INPUTS,
        )
        .unwrap()
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    let three_threads = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(run);
    for (a, b) in one_thread.layers.iter().zip(&three_threads.layers) {
        assert_eq!(
            (&a.z, &a.pattern, &a.mlp_in, &a.resid_pre),
            (&b.z, &b.pattern, &b.mlp_in, &b.resid_pre)
        );
        let (a, b) = (
            a.head_inputs.as_ref().unwrap(),
            b.head_inputs.as_ref().unwrap(),
        );
        assert_eq!((&a.q, &a.k, &a.v), (&b.q, &b.k, &b.v));
    }
    assert_eq!(one_thread.resid_final, three_threads.resid_final);
}

/// Records what a [`HeadInputSink`] is handed, in order.
#[derive(Default)]
struct Recorder {
    forwards: std::sync::Mutex<Vec<ndarray::Array3<f32>>>,
    layers: std::sync::Mutex<Vec<(usize, HeadInputGradients)>>,
}

impl HeadInputSink for Recorder {
    fn forward(&self, activations: &circuit::model::ActivationCache) {
        assert!(
            self.layers.lock().unwrap().is_empty(),
            "the forward comes first"
        );
        self.forwards
            .lock()
            .unwrap()
            .push(activations.embed.clone());
    }
    fn layer(&self, layer: usize, gradients: HeadInputGradients) {
        self.layers.lock().unwrap().push((layer, gradients));
    }
}

#[test]
fn a_head_input_sink_is_handed_every_layer_last_first_and_the_rest_is_unchanged() {
    // Path-edge scores take the head-input gradients layer by layer (`attribute::path_edges`):
    // the sink must get exactly what the pass would have kept, after the forward's activations.
    let model = Model::load(&stories()).unwrap();
    let case = Case::new(&model, 501);
    let kept = gradients(
        &model,
        &case.tokens,
        &case.targets,
        Objective::LogitDiff,
        WITH_HEAD_INPUTS,
    )
    .unwrap();
    let recorder = Recorder::default();
    let handed = gradients(
        &model,
        &case.tokens,
        &case.targets,
        Objective::LogitDiff,
        GradientOptions {
            head_input_sink: Some(&recorder),
            ..WITH_HEAD_INPUTS
        },
    )
    .unwrap();
    let forwards = recorder.forwards.into_inner().unwrap();
    assert_eq!(forwards, vec![kept.activations.embed.clone()]);
    let layers = recorder.layers.into_inner().unwrap();
    let order: Vec<usize> = layers.iter().map(|l| l.0).collect();
    assert_eq!(order, (0..kept.layers.len()).rev().collect::<Vec<_>>());
    for (layer, got) in &layers {
        let want = kept.layers[*layer].head_inputs.as_ref().unwrap();
        assert_eq!(
            (&got.q, &got.k, &got.v),
            (&want.q, &want.k, &want.v),
            "layer {layer}"
        );
        assert!(got.q.iter().any(|&x| x != 0.0), "layer {layer}");
    }
    for layer in &handed.layers {
        assert!(layer.head_inputs.is_none(), "handed over, not kept");
    }
    assert_same_gradients_but_head_inputs(&handed, &kept);
}
