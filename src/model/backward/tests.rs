//! Every block's backward against central finite differences in f64, and the restated
//! forwards against the engine's own forward (its activation cache) on real models.

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::blocks::*;
use super::*;
use crate::model::{ForwardOptions, Model, NoInterventions};

fn random(rng: &mut ChaCha8Rng, shape: (usize, usize)) -> Array2<f64> {
    Array2::from_shape_fn(shape, |_| rng.random_range(-1.0..1.0))
}

/// Central differences of `f` at every element of `x` (step `1e-5`, error `O(1e-10)` here).
fn numeric_gradient(x: &Array2<f64>, f: impl Fn(&Array2<f64>) -> f64) -> Array2<f64> {
    let step = 1e-5;
    let mut gradient = Array2::zeros(x.raw_dim());
    let mut shifted = x.clone();
    for (index, g) in gradient.indexed_iter_mut() {
        let original = shifted[index];
        shifted[index] = original + step;
        let up = f(&shifted);
        shifted[index] = original - step;
        let down = f(&shifted);
        shifted[index] = original;
        *g = (up - down) / (2.0 * step);
    }
    gradient
}

/// The largest difference between `analytic` and `numeric`, relative to the largest
/// numeric entry; `Err` (naming the worst element) when it exceeds `1e-6`.
fn compare(name: &str, analytic: &Array2<f64>, numeric: &Array2<f64>) -> Result<f64, String> {
    assert_eq!(analytic.dim(), numeric.dim(), "{name}: shapes");
    let scale = numeric.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    let (worst, error) = (analytic.indexed_iter())
        .map(|(i, a)| (i, (a - numeric[i]).abs() / scale))
        .fold(((0, 0), 0.0), |best, x| if x.1 > best.1 { x } else { best });
    if error > 1e-6 {
        return Err(format!(
            "{name}: relative error {error:.3e} at {worst:?}: analytic {} vs finite differences {}",
            analytic[worst], numeric[worst]
        ));
    }
    Ok(error)
}

/// `Σ y ⊙ r`: a scalar whose gradient with respect to `y` is `r`.
fn weighted_sum(y: &Array2<f64>, r: &Array2<f64>) -> f64 {
    (y * r).sum()
}

fn check(name: &str, analytic: &Array2<f64>, numeric: &Array2<f64>) {
    let error = compare(name, analytic, numeric).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{name}: max relative error {error:.2e}");
}

#[test]
fn the_comparison_detects_a_wrong_gradient() {
    // LayerNorm's gradient scaled by 1.001, or with one entry off: both must be rejected, or
    // the block tests below could pass with a broken backward.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (x, r) = (random(&mut rng, (3, 8)), random(&mut rng, (3, 8)));
    let (w, b) = (Array1::from_elem(8, 1.3), Array1::from_elem(8, 0.1));
    let numeric = numeric_gradient(&x, |x| {
        weighted_sum(&layernorm_forward(x.view(), w.view(), b.view(), 1e-5), &r)
    });
    let right = layernorm_backward(x.view(), w.view(), 1e-5, r.view());
    assert!(compare("right", &right, &numeric).is_ok());
    let scaled = &right * 1.001;
    assert!(compare("scaled", &scaled, &numeric).is_err());
    // One entry off by 1e-4 of the gradient's scale.
    let mut one_off = right.clone();
    one_off[[1, 3]] += 1e-4 * numeric.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let message = compare("one entry off", &one_off, &numeric).unwrap_err();
    assert!(message.contains("at (1, 3)"), "{message}");
}

#[test]
fn layernorm_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (x, r) = (random(&mut rng, (4, 16)), random(&mut rng, (4, 16)));
    let w = random(&mut rng, (1, 16)).row(0).to_owned() + 1.0;
    let b = random(&mut rng, (1, 16)).row(0).to_owned();
    let numeric = numeric_gradient(&x, |x| {
        weighted_sum(&layernorm_forward(x.view(), w.view(), b.view(), 1e-5), &r)
    });
    let analytic = layernorm_backward(x.view(), w.view(), 1e-5, r.view());
    check("layernorm", &analytic, &numeric);
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (x, r) = (random(&mut rng, (4, 16)), random(&mut rng, (4, 16)));
    let w = random(&mut rng, (1, 16)).row(0).to_owned() + 1.0;
    let numeric = numeric_gradient(&x, |x| {
        weighted_sum(&rmsnorm_forward(x.view(), w.view(), 1e-5), &r)
    });
    let analytic = rmsnorm_backward(x.view(), w.view(), 1e-5, r.view());
    check("rmsnorm", &analytic, &numeric);
}

#[test]
fn linear_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (x, w) = (random(&mut rng, (5, 6)), random(&mut rng, (6, 7)));
    let (b, r) = (
        random(&mut rng, (1, 7)).row(0).to_owned(),
        random(&mut rng, (5, 7)),
    );
    let numeric = numeric_gradient(&x, |x| {
        weighted_sum(&linear_forward(x.view(), w.view(), Some(b.view())), &r)
    });
    // A transposed weight view, as Llama's (out, in) matrices are stored.
    let stored = w.t().to_owned();
    let analytic = linear_backward(stored.t(), r.view());
    check("linear", &analytic, &numeric);
}

#[test]
fn gelu_new_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = random(&mut rng, (4, 10)) * 4.0;
    let r = random(&mut rng, (4, 10));
    let numeric = numeric_gradient(&x, |x| weighted_sum(&gelu_new_forward(x.view()), &r));
    check("gelu_new", &gelu_new_backward(x.view(), r.view()), &numeric);
}

#[test]
fn the_f32_gelu_new_backward_is_the_generic_one_to_f32_rounding() {
    // Wide inputs (both saturated tails, where σ(2u) is 0 or 1) and odd lengths (the
    // vectorized loop's remainder).
    let mut rng = ChaCha8Rng::seed_from_u64(25);
    for (rows, cols) in [(3, 7), (5, 4099), (1, 1)] {
        let x = random(&mut rng, (rows, cols)) * 12.0;
        let dy = random(&mut rng, (rows, cols));
        let (x32, dy32) = (x.mapv(|v| v as f32), dy.mapv(|v| v as f32));
        let exact = gelu_new_backward(x32.mapv(f64::from).view(), dy32.mapv(f64::from).view());
        let fast = gelu_new_backward_f32(x32.view(), dy32.view());
        for ((&e, &f), &d) in exact.iter().zip(&fast).zip(&dy32) {
            // The slope's terms are at most ~1.1: a few f32 ulp of them, times |dy|.
            let error = (e - f as f64).abs();
            assert!(
                error <= 1e-6 * (d as f64).abs() + 1e-12,
                "slope × dy: f64 {e}, f32 {f} (|error| {error:e}, dy {d})"
            );
        }
    }
}

#[test]
fn gelu_erf_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let x = random(&mut rng, (4, 10)) * 4.0;
    let r = random(&mut rng, (4, 10));
    let numeric = numeric_gradient(&x, |x| weighted_sum(&gelu_erf_forward(x.view()), &r));
    check("gelu_erf", &gelu_erf_backward(x.view(), r.view()), &numeric);
    // The restated forward is the engine's (f32, libm's erff) to rounding.
    let engine = x.mapv(|v| f64::from(crate::model::numerics::gelu_erf(v as f32)));
    let restated = gelu_erf_forward(x.view());
    assert!((engine - restated).iter().all(|d| d.abs() < 1e-6));
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (gate, up) = (random(&mut rng, (4, 10)) * 4.0, random(&mut rng, (4, 10)));
    let r = random(&mut rng, (4, 10));
    let (d_gate, d_up) = swiglu_backward(gate.view(), up.view(), r.view());
    let numeric_gate = numeric_gradient(&gate, |g| {
        weighted_sum(&swiglu_forward(g.view(), up.view()), &r)
    });
    let numeric_up = numeric_gradient(&up, |u| {
        weighted_sum(&swiglu_forward(gate.view(), u.view()), &r)
    });
    check("swiglu gate", &d_gate, &numeric_gate);
    check("swiglu up", &d_up, &numeric_up);
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (gate, up) = (random(&mut rng, (4, 10)) * 4.0, random(&mut rng, (4, 10)));
    let r = random(&mut rng, (4, 10));
    let forward = |g: &Array2<f64>, u: &Array2<f64>| gelu_new_forward(g.view()) * u;
    let (d_gate, d_up) = geglu_backward(gate.view(), up.view(), r.view());
    let numeric_gate = numeric_gradient(&gate, |g| weighted_sum(&forward(g, &up), &r));
    let numeric_up = numeric_gradient(&up, |u| weighted_sum(&forward(&gate, u), &r));
    check("geglu gate", &d_gate, &numeric_gate);
    check("geglu up", &d_up, &numeric_up);
}

#[test]
fn the_f32_geglu_backward_is_the_generic_one_to_f32_rounding() {
    // As the gelu_new test: saturated tails, odd lengths, and a transposed (non-contiguous)
    // gate, which the slices path copies first.
    let mut rng = ChaCha8Rng::seed_from_u64(26);
    for (rows, cols) in [(3, 7), (5, 4099), (1, 1)] {
        let to32 = |a: Array2<f64>| a.mapv(|v| v as f32);
        let gate = to32(random(&mut rng, (rows, cols)) * 12.0);
        let up = to32(random(&mut rng, (rows, cols)) * 2.0);
        let dh = to32(random(&mut rng, (rows, cols)));
        let gate_t = gate.t().as_standard_layout().into_owned(); // (cols, rows)
        let f64s = |a: &Array2<f32>| a.mapv(f64::from);
        let (exact_gate, exact_up) =
            geglu_backward(f64s(&gate).view(), f64s(&up).view(), f64s(&dh).view());
        for gate in [gate.view(), gate_t.t()] {
            let (fast_gate, fast_up) = geglu_backward_f32(gate, up.view(), dh.view());
            for (name, exact, fast) in [
                ("gate", &exact_gate, &fast_gate),
                ("up", &exact_up, &fast_up),
            ] {
                for (((&e, &f), &d), &u) in exact.iter().zip(fast).zip(&dh).zip(&up) {
                    // gelu's slope is at most ~1.1 and gelu(x) at most |x| ≤ 12: a few f32
                    // ulp of them, times |dh·up| or |dh|.
                    let scale = match name {
                        "gate" => (d as f64 * u as f64).abs(),
                        _ => 12.0 * (d as f64).abs(),
                    };
                    let error = (e - f as f64).abs();
                    assert!(
                        error <= 1e-6 * scale + 1e-12,
                        "geglu {name}: f64 {e}, f32 {f} (|error| {error:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn soft_cap_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let x = random(&mut rng, (3, 7)) * 6.0;
    let r = random(&mut rng, (3, 7));
    let cap = 2.5;
    let forward = |x: &Array2<f64>| x.mapv(|v| (v / cap).tanh() * cap);
    let analytic = soft_cap_backward(forward(&x).view(), cap, r.view());
    let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x), &r));
    check("soft cap", &analytic, &numeric);
}

#[test]
fn rotary_backward_matches_finite_differences() {
    rotary_backward_on(8, 8, 7);
}

/// Partial rotary (GPT-NeoX): 4 of each head's 10 dimensions turn, the other 6 pass.
#[test]
fn partial_rotary_backward_matches_finite_differences() {
    rotary_backward_on(10, 4, 17);
}

/// f64 rotary tables for `seq` positions over `rotary_dim` dimensions, and the rotation and
/// its backward on the rows of prompts of `seq` rows each.
struct TestRotary {
    cos: Array2<f64>,
    sin: Array2<f64>,
    seq: usize,
}

impl TestRotary {
    fn new(seq: usize, rotary_dim: usize) -> TestRotary {
        let angle = Array2::from_shape_fn((seq, rotary_dim / 2), |(t, i)| {
            t as f64 * 10f64.powf(-((2 * i) as f64) / rotary_dim as f64)
        });
        TestRotary {
            cos: angle.mapv(f64::cos),
            sin: angle.mapv(f64::sin),
            seq,
        }
    }

    fn turned(&self, x: &Array2<f64>, d_head: usize) -> Array2<f64> {
        let mut y = x.clone();
        let seq = self.seq;
        rotate_half(
            &mut y,
            self.cos.view(),
            self.sin.view(),
            |row| row % seq,
            d_head,
            false,
        );
        y
    }

    fn turned_back(&self, dy: &Array2<f64>, d_head: usize) -> Array2<f64> {
        let mut dx = dy.clone();
        let seq = self.seq;
        rotate_half_backward(
            &mut dx,
            self.cos.view(),
            self.sin.view(),
            |row| row % seq,
            d_head,
        );
        dx
    }
}

fn rotary_backward_on(d_head: usize, rotary_dim: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (seq, heads) = (5, 3);
    let rotary = TestRotary::new(seq, rotary_dim);
    let x = random(&mut rng, (2 * seq, heads * d_head)); // two prompts of `seq` rows
    let r = random(&mut rng, (2 * seq, heads * d_head));
    let forward = |x: &Array2<f64>| rotary.turned(x, d_head);
    let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x), &r));
    let analytic = rotary.turned_back(&r, d_head);
    check("rotary", &analytic, &numeric);
    // The dimensions past `rotary_dim` pass unchanged.
    let turned = forward(&x);
    for h in 0..heads {
        let pass = s![.., h * d_head + rotary_dim..(h + 1) * d_head];
        assert_eq!(turned.slice(pass), x.slice(pass));
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    // Plain, and soft-capped (Gemma 2) with a cap the scores reach.
    for softcap in [None, Some(0.8)] {
        attention_backward_on(softcap);
    }
}

fn attention_backward_on(softcap: Option<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (seq, d) = (6, 4);
    let scale = 1.0 / (d as f64).sqrt();
    let q = random(&mut rng, (seq, d)) * 2.0;
    let k = random(&mut rng, (seq, d)) * 2.0;
    let v = random(&mut rng, (seq, d));
    let r = random(&mut rng, (seq, d));
    let loss = |q: &Array2<f64>, k: &Array2<f64>, v: &Array2<f64>| {
        weighted_sum(
            &attention_forward(q.view(), k.view(), v.view(), scale, softcap, None).z,
            &r,
        )
    };
    let pattern = attention_forward(q.view(), k.view(), v.view(), scale, softcap, None).pattern;
    // The capped scores the forward's cache holds (masked entries −∞).
    let mut capped = (q.dot(&k.t()) * scale).mapv(|s| match softcap {
        Some(cap) => (s / cap).tanh() * cap,
        None => s,
    });
    for (i, mut row) in capped.rows_mut().into_iter().enumerate() {
        row.slice_mut(s![i + 1..]).fill(f64::NEG_INFINITY);
    }
    let grads = attention_backward(
        q.view(),
        k.view(),
        v.view(),
        pattern.view(),
        r.view(),
        scale,
        softcap.map(|cap| (capped.view(), cap)),
        None,
    );
    check(
        "attention q",
        &grads.q,
        &numeric_gradient(&q, |q| loss(q, &k, &v)),
    );
    check(
        "attention k",
        &grads.k,
        &numeric_gradient(&k, |k| loss(&q, k, &v)),
    );
    check(
        "attention v",
        &grads.v,
        &numeric_gradient(&v, |v| loss(&q, &k, v)),
    );
    // With respect to the pattern itself, z = A·v.
    let numeric_pattern = numeric_gradient(&pattern, |a| weighted_sum(&a.dot(&v), &r));
    check("attention pattern", &grads.pattern, &numeric_pattern);
    // Masked entries get no gradient through the scores: the last key only reaches the last
    // query.
    assert!(grads.k.row(seq - 1).iter().any(|&g| g != 0.0));
}

#[test]
fn attention_backward_with_constant_terms_matches_finite_differences() {
    // Edge-mean ablation of QK edges: z[i] = Σ_{k computed} A[i,k]·v[k] + constants; the
    // constant terms pass nothing back, but their scores still move the kept keys' weights.
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (seq, d) = (6, 4);
    let scale = 1.0 / (d as f64).sqrt();
    let q = random(&mut rng, (seq, d)) * 2.0;
    let k = random(&mut rng, (seq, d)) * 2.0;
    let v = random(&mut rng, (seq, d));
    let r = random(&mut rng, (seq, d));
    // Query 4 keeps keys 1 and 4 only; query 5 keeps key 0; every other query keeps all.
    let computed = Array2::from_shape_fn((seq, seq), |(i, j)| match i {
        4 => j == 1 || j == 4,
        5 => j == 0,
        _ => true,
    });
    let loss = |q: &Array2<f64>, k: &Array2<f64>, v: &Array2<f64>| {
        let pattern = attention_forward(q.view(), k.view(), v.view(), scale, None, None).pattern;
        let mut used = pattern.clone();
        used.zip_mut_with(&computed, |a, &c| {
            if !c {
                *a = 0.0
            }
        });
        weighted_sum(&used.dot(v), &r)
    };
    let pattern = attention_forward(q.view(), k.view(), v.view(), scale, None, None).pattern;
    let grads = attention_backward(
        q.view(),
        k.view(),
        v.view(),
        pattern.view(),
        r.view(),
        scale,
        None,
        Some(computed.view()),
    );
    check(
        "masked attention q",
        &grads.q,
        &numeric_gradient(&q, |q| loss(q, &k, &v)),
    );
    check(
        "masked attention k",
        &grads.k,
        &numeric_gradient(&k, |k| loss(&q, k, &v)),
    );
    check(
        "masked attention v",
        &grads.v,
        &numeric_gradient(&v, |v| loss(&q, &k, v)),
    );
    // Without the mask the gradients differ (the test can fail).
    let unmasked = attention_backward(
        q.view(),
        k.view(),
        v.view(),
        pattern.view(),
        r.view(),
        scale,
        None,
        None,
    );
    assert!((&unmasked.v - &grads.v).iter().any(|x| x.abs() > 1e-3));
}

/// Qwen3's q (or k) path before the scores: a per-head RMSNorm with one gain of width `d`,
/// then rotary. The backward turns the gradient back, then passes it through each head's norm.
#[test]
fn per_head_norm_then_rotary_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let (seq, heads, d_head) = (4, 3, 6);
    let rotary = TestRotary::new(seq, d_head);
    let x = random(&mut rng, (2 * seq, heads * d_head)); // two prompts of `seq` rows
    let r = random(&mut rng, (2 * seq, heads * d_head));
    let w = random(&mut rng, (1, d_head)).row(0).to_owned() + 1.0;
    let eps = 1e-6;
    let forward = |x: &Array2<f64>| {
        rotary.turned(
            &per_head_rmsnorm_forward(x.view(), w.view(), eps, d_head),
            d_head,
        )
    };
    let numeric = numeric_gradient(&x, |x| weighted_sum(&forward(x), &r));
    let d_normed = rotary.turned_back(&r, d_head);
    let analytic = per_head_norm_backward(x.view(), d_normed.view(), d_head, |x, dy| {
        rmsnorm_backward(x, w.view(), eps, dy)
    });
    check("per-head rmsnorm + rotary", &analytic, &numeric);
    // Each head is a norm of its own: the norm of the whole row would be another function.
    let whole = rmsnorm_forward(x.view(), Array1::from_elem(heads * d_head, 1.0).view(), eps);
    let ones = Array1::from_elem(d_head, 1.0);
    let per_head = per_head_rmsnorm_forward(x.view(), ones.view(), eps, d_head);
    assert!((&whole - &per_head).iter().any(|v| v.abs() > 1e-3));
}

#[test]
fn grouped_query_backward_sums_the_heads_of_a_group() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (rows, n_kv, group, d) = (3, 2, 3, 4);
    let kv = random(&mut rng, (rows, n_kv * d));
    let r = random(&mut rng, (rows, n_kv * group * d));
    // The engine's expand_kv: query head h reads key/value head h / group.
    let expand = |kv: &Array2<f64>| {
        Array2::from_shape_fn((rows, n_kv * group * d), |(row, c)| {
            kv[[row, (c / d / group) * d + c % d]]
        })
    };
    let numeric = numeric_gradient(&kv, |kv| weighted_sum(&expand(kv), &r));
    check(
        "grouped-query",
        &sum_query_heads_per_kv_head(r.view(), group, d),
        &numeric,
    );
}

#[test]
fn unembed_backward_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (x, u) = (random(&mut rng, (3, 6)), random(&mut rng, (11, 6)));
    let r = random(&mut rng, (3, 11));
    let numeric = numeric_gradient(&x, |x| {
        weighted_sum(&unembed_forward(x.view(), u.view()), &r)
    });
    check("unembed", &unembed_backward(u.view(), r.view()), &numeric);
}

#[test]
fn metric_backward_matches_finite_differences_of_the_measured_metric() {
    // The metric's value is the measure stage's (f32 logits in, f64 out): differentiate that.
    // Logits on a 2^-10 grid and steps of 2^-7 and 2^-8 keep every shifted logit exact in f32.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let grid = |x: f64| (x * 1024.0).round() / 1024.0;
    let logits = (random(&mut rng, (1, 12)) * 3.0).mapv(grid);
    let full = (random(&mut rng, (1, 12)) * 3.0).mapv(grid);
    let (answer, distractor) = (4, 9);
    let targets = [crate::measure::Targets {
        answer: answer as u32,
        distractor: distractor as u32,
    }];
    let full32 = full.mapv(|x| x as f32);
    let full_row = full.row(0).to_owned();
    let metrics = [
        ("logit_diff", EndMetric::LogitDiff),
        ("prob", EndMetric::Prob),
        ("logprob", EndMetric::Logprob),
        (
            "kl",
            EndMetric::Kl {
                full_logits: full_row.view(),
            },
        ),
    ];
    for (name, metric) in metrics {
        let reference = crate::measure::ALL_METRICS
            .into_iter()
            .find(|&m| crate::measure::metric_name(m) == name)
            .unwrap();
        let measured = |l: &Array2<f64>| {
            let l32 = l.mapv(|x| x as f32);
            crate::measure::per_prompt_metrics(l32.view(), full32.view(), &targets)[&reference][0]
        };
        let central = |h: f64| {
            let mut gradient = Array2::zeros(logits.raw_dim());
            for (index, g) in gradient.indexed_iter_mut() {
                let (mut up, mut down) = (logits.clone(), logits.clone());
                up[index] += h;
                down[index] -= h;
                *g = (measured(&up) - measured(&down)) / (2.0 * h);
            }
            gradient
        };
        // Richardson: the h² error terms of the two steps cancel.
        let (h, half) = (central(1.0 / 128.0), central(1.0 / 256.0));
        let numeric = (half * 4.0 - h) / 3.0;
        let gradient = metric_backward(metric, logits.row(0), answer, distractor);
        check(name, &gradient.insert_axis(Axis(0)), &numeric);
    }
}

#[test]
fn accuracy_has_no_gradient() {
    let err = Objective::from_metric_name("accuracy", None).unwrap_err();
    let code = miette::Diagnostic::code(&err).unwrap().to_string();
    assert_eq!(code, "circuit::model::no_gradient");
    assert!(matches!(
        Objective::from_metric_name("kl", None),
        Err(GradientError::KlNeedsFullLogits)
    ));
    assert!(matches!(
        Objective::from_metric_name("logit_diff", None),
        Ok(Objective::LogitDiff)
    ));
}

// ---- the restated forwards against the engine's ------------------------------------------

fn prompts(model: &Model) -> Vec<Vec<u32>> {
    let n = model.n_embedding_rows().min(model.tokenizer.vocab_size()) as u32;
    // Unequal lengths, so padding rows are exercised too.
    vec![
        (0..7).map(|i| (i * 37 + 3) % n).collect(),
        (0..4).map(|i| (i * 11 + 5) % n).collect(),
    ]
}

fn max_difference(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f32 {
    (&a - &b).iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Recomputes every cached intermediate of each real row from the previous one with the
/// restated forwards, and compares with the engine's cache.
fn restated_forwards_match_the_cache(model: &Model) {
    let tokens = prompts(model);
    let options = ForwardOptions {
        all_logits: true,
        cache: true,
    };
    let out = model.forward(&tokens, &options, &NoInterventions).unwrap();
    let cache = out.cache.unwrap();
    let t = &model.transformer;
    let group = t.n_heads / t.n_kv_heads;
    let d_head = t.d_head;
    let norm = |norm: &Norm, x: ArrayView2<f32>| match norm {
        Norm::Layer { weight, bias, eps } => layernorm_forward(x, weight.view(), bias.view(), *eps),
        Norm::Rms { weight, eps } => rmsnorm_forward(x, weight.view(), *eps),
    };
    let tolerance = 2e-5;
    for (b, ids) in tokens.iter().enumerate() {
        let len = ids.len();
        for (layer_index, (layer, lc)) in t.layers.iter().zip(&cache.layers).enumerate() {
            let resid_pre = lc.resid_pre.slice(s![b, ..len, ..]);
            let x = norm(&layer.attn_norm, resid_pre);
            let project = |linear: &super::super::transformer::Linear| {
                linear_forward(
                    x.view(),
                    linear.weight.f32().view(),
                    linear.bias.as_ref().map(|b| b.view()),
                )
            };
            let (mut q, mut k, v) = (project(&layer.q), project(&layer.k), project(&layer.v));
            if let Some(norms) = &layer.qk_norm {
                // Qwen3: each head of q and of k normed with its own gain, before rotary.
                let per_head = |norm: &Norm, x: &Array2<f32>| match norm {
                    Norm::Rms { weight, eps } => {
                        per_head_rmsnorm_forward(x.view(), weight.view(), *eps, d_head)
                    }
                    Norm::Layer { .. } => panic!("Qwen3's q/k norms are RMSNorms"),
                };
                (q, k) = (per_head(&norms.q, &q), per_head(&norms.k, &k));
            }
            if let Positions::Rotary { inv_freq } = &t.positions {
                let (cos, sin) = rotary_tables(inv_freq, len);
                rotate_half(&mut q, cos.view(), sin.view(), |r| r, d_head, false);
                rotate_half(&mut k, cos.view(), sin.view(), |r| r, d_head, false);
            }
            for h in 0..t.n_heads {
                let kv = h / group;
                let head = |a: &Array2<f32>, i: usize| {
                    a.slice(s![.., i * d_head..(i + 1) * d_head]).to_owned()
                };
                let (qh, kh, vh) = (head(&q, h), head(&k, kv), head(&v, kv));
                assert!(max_difference(qh.view(), lc.q.slice(s![b, ..len, h, ..])) < tolerance);
                assert!(max_difference(kh.view(), lc.k.slice(s![b, ..len, kv, ..])) < tolerance);
                assert!(max_difference(vh.view(), lc.v.slice(s![b, ..len, kv, ..])) < tolerance);
                let attention = attention_forward(
                    lc.q.slice(s![b, ..len, h, ..]),
                    lc.k.slice(s![b, ..len, kv, ..]),
                    lc.v.slice(s![b, ..len, kv, ..]),
                    t.score_scale(),
                    t.scaling.attn_logit_softcap,
                    t.attention_window(layer_index),
                );
                let cached_pattern = lc.pattern.slice(s![b, h, ..len, ..len]);
                assert!(max_difference(attention.pattern.view(), cached_pattern) < tolerance);
                let cached_z = lc.z.slice(s![b, ..len, h, ..]);
                assert!(max_difference(attention.z.view(), cached_z) < tolerance);
            }
            let mlp_read = match t.residual {
                crate::model::ResidualTopology::Sequential
                | crate::model::ResidualTopology::SequentialPostNorm => {
                    lc.resid_mid.slice(s![b, ..len, ..])
                }
                crate::model::ResidualTopology::Parallel => resid_pre,
            };
            let x = norm(&layer.mlp_norm, mlp_read);
            let mlp_out = match &layer.mlp {
                Mlp::GeluNew { fc, proj } | Mlp::GeluErf { fc, proj } => {
                    let pre = linear_forward(
                        x.view(),
                        fc.weight.f32().view(),
                        fc.bias.as_ref().map(|b| b.view()),
                    );
                    let hidden = match &layer.mlp {
                        Mlp::GeluNew { .. } => gelu_new_forward(pre.view()),
                        _ => gelu_erf_forward(pre.view()),
                    };
                    linear_forward(
                        hidden.view(),
                        proj.weight.f32().view(),
                        proj.bias.as_ref().map(|b| b.view()),
                    )
                }
                Mlp::SwiGlu { gate, up, down } | Mlp::GeGlu { gate, up, down } => {
                    let g = linear_forward(
                        x.view(),
                        gate.weight.f32().view(),
                        gate.bias.as_ref().map(|b| b.view()),
                    );
                    let u = linear_forward(
                        x.view(),
                        up.weight.f32().view(),
                        up.bias.as_ref().map(|b| b.view()),
                    );
                    let hidden = match &layer.mlp {
                        Mlp::GeGlu { .. } => gelu_new_forward(g.view()) * &u,
                        _ => swiglu_forward(g.view(), u.view()),
                    };
                    linear_forward(
                        hidden.view(),
                        down.weight.f32().view(),
                        down.bias.as_ref().map(|b| b.view()),
                    )
                }
            };
            let mlp_out = match &layer.mlp_post_norm {
                Some(post_norm) => norm(post_norm, mlp_out.view()),
                None => mlp_out,
            };
            let cached = lc.mlp_out.slice(s![b, ..len, ..]);
            let scale = cached.iter().fold(1.0f32, |m, x| m.max(x.abs()));
            assert!(max_difference(mlp_out.view(), cached) < tolerance * scale);
        }
        let resid_final = cache.resid_final.slice(s![b, ..len, ..]);
        let unembed = t.unembed.as_ref().unwrap_or(&t.embed);
        let mut logits = unembed_forward(
            norm(&t.final_norm, resid_final).view(),
            unembed.f32().view(),
        );
        if let Some(cap) = t.scaling.final_logit_softcap {
            logits.mapv_inplace(|l| (l / cap).tanh() * cap);
        }
        let engine = out.logits.slice(s![b, ..len, ..]);
        let scale = engine.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let difference = max_difference(logits.view(), engine);
        assert!(
            difference < tolerance * scale,
            "logits differ by {difference}"
        );
    }
}

#[test]
fn restated_forwards_match_the_engine_on_the_builtin_gpt2() {
    restated_forwards_match_the_cache(&crate::model::builtin::load("toy-seqcont").unwrap());
}

#[test]
fn restated_forwards_match_the_engine_on_gpt_neox_both_wirings() {
    for name in ["neox-parallel-f16", "neox-sequential-bf16"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        restated_forwards_match_the_cache(&Model::load(&dir).unwrap());
    }
}

#[test]
fn restated_forwards_match_the_engine_on_qwen2_with_qkv_biases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/qwen2-tied-f32");
    restated_forwards_match_the_cache(&Model::load(&dir).unwrap());
}

#[test]
fn restated_forwards_match_the_engine_on_gemma2() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gemma2-bf16");
    restated_forwards_match_the_cache(&Model::load(&dir).unwrap());
}

#[test]
fn restated_forwards_match_the_engine_on_a_grouped_query_llama() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/llama-gqa-bf16");
    restated_forwards_match_the_cache(&Model::load(&dir).unwrap());
}

#[test]
fn restated_forwards_match_the_engine_on_qwen3_with_per_head_qk_norms() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen3-bf16");
    let model = Model::load(&dir).unwrap();
    assert!(model.transformer.layers.iter().all(|l| l.qk_norm.is_some()));
    restated_forwards_match_the_cache(&model);
}

#[test]
fn the_unembedding_backward_gathers_rows_for_sparse_gradients_and_equals_the_product() {
    // logit_diff's gradient is nonzero at two logits per prompt: the rows of W_U are gathered
    // instead of the (B, V)·(V, D) product; a dense gradient takes the product. Both agree.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (vocab, d_model) = (300, 24);
    let w = random(&mut rng, (vocab, d_model)).mapv(|x| x as f32); // (V, D)
    let unembed = crate::model::stored::Weight::F32(w.clone());
    let mut sparse = Array2::<f32>::zeros((3, vocab)); // (B, V)
    for (b, (answer, distractor)) in [(5, 17), (299, 0), (42, 43)].into_iter().enumerate() {
        sparse[[b, answer]] = 0.25 + b as f32;
        sparse[[b, distractor]] = -0.75;
    }
    let dense = random(&mut rng, (3, vocab)).mapv(|x| x as f32); // (B, V)
    for d_logits in [sparse, dense] {
        let got = unembedding_backward(&unembed, d_logits.view()); // (B, D)
        let expected = d_logits.mapv(f64::from).dot(&w.mapv(f64::from)); // (B, D), f64
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{g} vs {e}"
            );
        }
    }
}
