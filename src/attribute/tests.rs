//! Scores against independent computations on the built-in model and the template numerals:
//! the eap node score against a central finite difference of the engine's own forward along
//! `(õ − o)`, the QK-edge sum identity, the path-edge sum identity, eap-ig with one step, and
//! determinism across thread counts.

use std::path::Path;

use ndarray::{s, ArrayView4, ArrayViewMut3, ArrayViewMut4};

use super::inputs::{reference_embeddings, slot_names};
use super::*;
use crate::ablate::ReferenceNeeds;
use crate::data::slots::prompt_slots;
use crate::measure::{mean, per_prompt_metrics, Session, SessionOptions};
use crate::model::{ForwardOptions, Interventions};
use crate::resolve::bound::AblationKind;
use crate::resolve::{resolve_source, RealEnvironment, ResolveOptions};

const FILE: &str = r#"model "toy-seqcont"
dataset numerals = seqcont.numerals(n = 12, seed = 0, form = "template")
reference numerals.corrupt
ablate heads and mlps by mean
metric logit_diff
"#;

/// A session's inputs, owned.
struct Fixture {
    session: Session<'static>,
    ids: Vec<Vec<u32>>,
    targets: Vec<Targets>,
    slots: Vec<Vec<String>>,
    reference: ReferenceValues,
}

fn fixture(text: &str, edge_heads: bool) -> Fixture {
    let resolved = resolve_source(
        "scores_test.circuit",
        text,
        Path::new("."),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let mut session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    let config = &session.model().config;
    let mut needs = ReferenceNeeds::default();
    if edge_heads {
        needs.edge_heads = (0..config.n_layers)
            .flat_map(|layer| (0..config.n_heads).map(move |head| HeadId { layer, head }))
            .collect();
    }
    let reference = session.reference_values(&needs).unwrap().clone();
    let clean = session.clean_prompts();
    Fixture {
        ids: clean.iter().map(|p| p.ids.clone()).collect(),
        targets: clean
            .iter()
            .map(|p| Targets {
                answer: p.answer_id,
                distractor: p.distractor_id,
            })
            .collect(),
        slots: clean
            .iter()
            .map(|p| slot_names(&prompt_slots(p).slots))
            .collect(),
        reference,
        session,
    }
}

impl Fixture {
    fn inputs<'a>(
        &'a self,
        metric: &'a str,
        x_ref: Option<ndarray::ArrayView3<'a, f32>>,
    ) -> AttributionInputs<'a> {
        AttributionInputs {
            model: self.session.model(),
            ids: &self.ids,
            targets: &self.targets,
            slots: &self.slots,
            metric,
            reference: &self.reference,
            reference_embeddings: x_ref,
            mlps_in_scope: true,
            on_pass: None,
            circuit: None,
        }
    }

    /// `M` (mean logit_diff) of the forward with `hooks`.
    fn metric(&self, hooks: &dyn Interventions) -> f64 {
        let model = self.session.model();
        let out = model
            .forward(&self.ids, &ForwardOptions::default(), hooks)
            .unwrap();
        let logits = out.logits.index_axis(Axis(1), 0).to_owned();
        let m = per_prompt_metrics(logits.view(), logits.view(), &self.targets);
        mean(&m[&crate::resolve::bound::Metric::LogitDiff])
    }
}

/// Moves head `head` of `layer` at token `t` of every prompt (or MLP `layer` when `head` is
/// `None`) by `epsilon · (õ − o)`: `epsilon = 1` is ablating it there alone.
struct Nudge<'a> {
    reference: &'a ReferenceValues,
    layer: usize,
    head: Option<usize>,
    t: usize,
    epsilon: f64,
}

impl Interventions for Nudge<'_> {
    fn edit_z(
        &self,
        layer: usize,
        _: ArrayView4<f32>,
        _: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        let Some(head) = self.head.filter(|_| layer == self.layer) else {
            return;
        };
        for b in 0..z.dim().0 {
            let mut ablated = vec![0.0f64; z.dim().3];
            self.reference.add_z(layer, b, self.t, head, &mut ablated);
            let mut row = z.slice_mut(s![b, self.t, head, ..]);
            for (o, a) in row.iter_mut().zip(&ablated) {
                *o = (*o as f64 + self.epsilon * (a - *o as f64)) as f32;
            }
        }
    }

    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        if self.head.is_some() || layer != self.layer {
            return;
        }
        for b in 0..mlp_out.dim().0 {
            let reference = self.reference.mlp_out(layer, b, self.t).unwrap().to_owned();
            let mut row = mlp_out.slice_mut(s![b, self.t, ..]);
            for (o, &a) in row.iter_mut().zip(&reference) {
                *o = (*o as f64 + self.epsilon * (a as f64 - *o as f64)) as f32;
            }
        }
    }
}

fn find(set: &ScoreSet, component: Component, query: &str, key: Option<&str>) -> f64 {
    set.entries
        .iter()
        .find(|e| e.component == component && e.query == query && e.key.as_deref() == key)
        .unwrap_or_else(|| panic!("no score for {component:?} @ {query} {key:?}"))
        .score
}

#[test]
fn eap_node_scores_are_the_derivative_of_the_metric_along_the_ablation() {
    let f = fixture(FILE, false);
    let set = scores(
        &f.inputs("logit_diff", None),
        Method::Eap,
        Granularity::Nodes,
    )
    .unwrap();
    let end = f.ids[0].len() - 1;
    // Every prompt has the same template: token t has the same slot in each.
    let s4 = f.slots[0].iter().position(|s| s == "S4").unwrap();
    let cases = [
        (0, Some(1), end),
        (0, Some(0), end),
        (1, Some(0), end),
        (2, Some(1), end),
        (0, Some(2), s4),
        (0, None, s4),
        (2, None, end),
    ];
    let epsilon = 1e-2;
    for (layer, head, t) in cases {
        let nudge = |epsilon| Nudge {
            reference: &f.reference,
            layer,
            head,
            t,
            epsilon,
        };
        let numeric = (f.metric(&nudge(epsilon)) - f.metric(&nudge(-epsilon))) / (2.0 * epsilon);
        let component = match head {
            Some(h) => Component::Head(HeadId { layer, head: h }),
            None => Component::Mlp(layer),
        };
        let score = find(&set, component, &f.slots[0][t], None);
        let exact = f.metric(&nudge(1.0)) - f.metric(&nudge(0.0));
        eprintln!(
            "{} @ {}: eap {score:.5}, finite difference {numeric:.5}, exact single ablation {exact:.5}",
            component.name(),
            f.slots[0][t]
        );
        // The finite difference of the f32 forward carries about 1e-4 of rounding noise, and
        // how much depends on the GEMM kernel (1.03e-4 on 0.2 @ S4 with the AVX-512 gemm
        // kernels, under 1e-4 with matrixmultiply's): 5e-3 relative, floored at 0.05, is that
        // noise bound, while a wrong gradient is off by far more.
        assert!(
            (score - numeric).abs() <= 5e-3 * numeric.abs().max(0.05),
            "{} @ {}: eap {score} vs finite difference {numeric}",
            component.name(),
            f.slots[0][t]
        );
    }
}

#[test]
fn qk_edge_scores_of_a_node_sum_to_its_node_score() {
    let f = fixture(FILE, true);
    let inputs = f.inputs("logit_diff", None);
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let edges = scores(&inputs, Method::Eap, Granularity::QkEdges).unwrap();
    let mut sums: BTreeMap<(Component, String), f64> = BTreeMap::new();
    for e in &edges.entries {
        *sums.entry((e.component, e.query.clone())).or_insert(0.0) += e.score;
    }
    let scale = nodes
        .entries
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for e in nodes
        .entries
        .iter()
        .filter(|e| matches!(e.component, Component::Head(_)))
    {
        let sum = sums[&(e.component, e.query.clone())];
        // z is the engine's f32 sum over keys and ref(z) an f32 mean: their sums over key terms
        // agree with them to f32 rounding, not further.
        worst = worst.max((sum - e.score).abs() / scale);
    }
    eprintln!("max |Σ_k edge − node| / max |node| = {worst:.2e}");
    assert!(worst < 1e-7, "{worst}");
}

#[test]
fn path_edge_scores_out_of_a_component_sum_to_its_node_score() {
    let f = fixture(FILE, false);
    let inputs = f.inputs("logit_diff", None);
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let paths = scores(&inputs, Method::Eap, Granularity::PathEdges).unwrap();
    let mut sums: BTreeMap<(Component, String), f64> = BTreeMap::new();
    for e in &paths.entries {
        let Component::Path { from, .. } = e.component else {
            panic!("{e:?}")
        };
        let node = match from {
            Upstream::Head(h) => Component::Head(h),
            Upstream::Mlp(l) => Component::Mlp(l),
            Upstream::Embed => panic!("no score leaves the embedding: {e:?}"),
        };
        *sums.entry((node, e.query.clone())).or_insert(0.0) += e.score;
    }
    let scale = nodes
        .entries
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for e in &nodes.entries {
        let sum = sums[&(e.component, e.query.clone())];
        worst = worst.max((sum - e.score).abs() / scale);
    }
    eprintln!("max |Σ_D path(u → D) − node(u)| / max |node| = {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn eap_ig_with_one_step_is_eap_and_more_steps_differ() {
    let f = fixture(FILE, false);
    let model = f.session.model();
    let reference_ids: Vec<Vec<u32>> = f
        .session
        .reference_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    let x_ref = reference_embeddings(
        model,
        f.session.settings().ablation,
        &f.ids,
        &reference_ids,
        None,
    )
    .unwrap();
    let inputs = f.inputs("logit_diff", Some(x_ref.view()));
    let eap = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let one = scores(&inputs, Method::EapIg { steps: 1 }, Granularity::Nodes).unwrap();
    assert_eq!(eap.entries, one.entries);
    let five = scores(&inputs, Method::EapIg { steps: 5 }, Granularity::Nodes).unwrap();
    let differ = eap
        .entries
        .iter()
        .zip(&five.entries)
        .filter(|(a, b)| (a.score - b.score).abs() > 1e-3)
        .count();
    assert!(differ > 0, "eap-ig with 5 steps equals eap everywhere");
}

#[test]
fn the_reference_embedding_is_the_mean_reference_embedding() {
    let f = fixture(FILE, false);
    let model = f.session.model();
    let reference_ids: Vec<Vec<u32>> = f
        .session
        .reference_prompts()
        .iter()
        .map(|p| p.ids.clone())
        .collect();
    let x_ref =
        reference_embeddings(model, AblationKind::Mean, &f.ids, &reference_ids, None).unwrap();
    let out = model
        .forward(
            &reference_ids,
            &ForwardOptions {
                all_logits: false,
                cache: true,
            },
            &crate::model::NoInterventions,
        )
        .unwrap();
    let embed = out.cache.unwrap().embed; // (R, T, D)
    let mean = embed.mean_axis(Axis(0)).unwrap(); // (T, D)
    for b in 0..f.ids.len() {
        let diff = (&x_ref.slice(s![b, .., ..]) - &mean)
            .mapv(f32::abs)
            .fold(0.0f32, |m, &x| m.max(x));
        assert!(diff < 1e-5, "prompt {b}: {diff}");
    }
    let zero =
        reference_embeddings(model, AblationKind::Zero, &f.ids, &reference_ids, None).unwrap();
    assert!(zero.iter().all(|&x| x == 0.0));
    let resample =
        reference_embeddings(model, AblationKind::Resample, &f.ids, &reference_ids, None).unwrap();
    assert_eq!(
        resample.slice(s![3, .., ..]),
        embed.slice(s![3 % reference_ids.len(), .., ..])
    );
}

#[test]
fn scores_are_bit_identical_across_thread_counts() {
    let f = fixture(FILE, true);
    let inputs = f.inputs("logit_diff", None);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            [
                Granularity::Nodes,
                Granularity::QkEdges,
                Granularity::PathEdges,
            ]
            .map(|g| scores(&inputs, Method::Eap, g).unwrap().entries)
        })
    };
    let (one, three) = (run(1), run(3));
    for (a, b) in one.iter().zip(&three) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.score.to_bits(), y.score.to_bits(), "{x:?} vs {y:?}");
        }
    }
}

#[test]
fn cheap_scores_are_attention_weights_and_norms() {
    let f = fixture(FILE, false);
    let inputs = f.inputs("logit_diff", None);
    let attention = scores(&inputs, Method::Attention, Granularity::QkEdges).unwrap();
    // Attention rows sum to 1 over keys, per prompt and so on average.
    let mut sums: BTreeMap<(Component, String), f64> = BTreeMap::new();
    for e in &attention.entries {
        *sums.entry((e.component, e.query.clone())).or_insert(0.0) += e.score;
    }
    for (key, sum) in &sums {
        assert!((sum - 1.0).abs() < 1e-5, "{key:?}: {sum}");
    }
    // qkvo is non-negative; dla only has END queries.
    let qkvo = scores(&inputs, Method::Qkvo, Granularity::QkEdges).unwrap();
    assert!(qkvo.entries.iter().all(|e| e.score >= 0.0));
    let dla = scores(&inputs, Method::Dla, Granularity::Nodes).unwrap();
    assert!(dla.entries.iter().all(|e| e.query == "END"));
    assert!(dla.entries.iter().any(|e| e.score.abs() > 1e-3));
}

#[test]
fn undefined_requests_are_coded_errors() {
    let code = |r: Result<(), AttributeError>| {
        miette::Diagnostic::code(&r.unwrap_err())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        code(check_request(
            Method::Eap,
            Granularity::Nodes,
            "accuracy",
            false
        )),
        "circuit::model::no_gradient"
    );
    assert_eq!(
        code(check_request(
            Method::Attention,
            Granularity::Nodes,
            "logit_diff",
            false
        )),
        "circuit::attribute::no_node_score"
    );
    assert_eq!(
        code(check_request(
            Method::Qkvo,
            Granularity::PathEdges,
            "logit_diff",
            false
        )),
        "circuit::attribute::no_path_edge_score"
    );
    assert_eq!(
        code(check_request(Method::Eap, Granularity::Nodes, "kl", false)),
        "circuit::attribute::kl_zero_gradient"
    );
    assert_eq!(
        code(check_request(
            Method::EapIg { steps: 0 },
            Granularity::Nodes,
            "prob",
            false
        )),
        "circuit::attribute::no_steps"
    );
    assert!(check_request(Method::EapIg { steps: 3 }, Granularity::Nodes, "kl", false).is_ok());
    assert!(check_request(Method::Eap, Granularity::Nodes, "kl", true).is_ok());
    assert_eq!(
        code(check_request(
            Method::EapIg { steps: 3 },
            Granularity::Nodes,
            "prob",
            true
        )),
        "circuit::attribute::ig_with_circuit"
    );
}

/// A circuit's node ablations, then a nudge (the finite difference relative to the circuit).
struct PlanThenNudge<'a> {
    plan: &'a crate::ablate::PlanInterventions<'a>,
    nudge: Nudge<'a>,
}

impl Interventions for PlanThenNudge<'_> {
    fn edit_scores(&self, layer: usize, scores: &mut ArrayViewMut4<f32>) {
        self.plan.edit_scores(layer, scores);
    }

    fn edit_z(
        &self,
        layer: usize,
        p: ArrayView4<f32>,
        v: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        self.plan.edit_z(layer, p, v, z);
        self.nudge.edit_z(layer, p, v, z);
    }

    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        self.plan.edit_mlp_out(layer, mlp_out);
        self.nudge.edit_mlp_out(layer, mlp_out);
    }
}

#[test]
fn eap_relative_to_a_circuit_is_the_derivative_with_its_ablations_in_place() {
    let text = format!("{FILE}\ncircuit movers {{\n  0.0..3 @ END\n  mlp 0..2\n}}\n");
    let f = fixture(&text, false);
    let resolved = resolve_source(
        "scores_test.circuit",
        &text,
        Path::new("."),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let plan = f.session.compile(&resolved.file.circuits[0]).unwrap();
    let hooks = crate::ablate::PlanInterventions {
        plan: &plan,
        reference: &f.reference,
        edge_ablation: crate::resolve::bound::EdgeAblation::EdgeMean,
        prompts: 0..f.ids.len(),
    };
    let mut inputs = f.inputs("logit_diff", None);
    inputs.circuit = Some(CircuitInPlace {
        hooks: &hooks,
        kept: backward::Kept {
            z: &plan.head_keep,
            mlp_out: &plan.mlp_keep,
        },
    });
    let set = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let relative_to_full = scores(
        &f.inputs("logit_diff", None),
        Method::Eap,
        Granularity::Nodes,
    )
    .unwrap();
    let end = f.ids[0].len() - 1;
    let s4 = f.slots[0].iter().position(|s| s == "S4").unwrap();
    // Kept components (MLP 0 at S4 reaches END only through frozen heads and the MLPs), and a
    // frozen one, whose score is 0 (it already holds its ablated value).
    let cases = [
        (0, Some(1), end),
        (0, Some(3), end),
        (0, None, s4),
        (1, None, end),
        (1, Some(0), end),
    ];
    let epsilon = 1e-2;
    let mut differs = false;
    for (layer, head, t) in cases {
        let nudged = |epsilon| PlanThenNudge {
            plan: &hooks,
            nudge: Nudge {
                reference: &f.reference,
                layer,
                head,
                t,
                epsilon,
            },
        };
        let numeric = (f.metric(&nudged(epsilon)) - f.metric(&nudged(-epsilon))) / (2.0 * epsilon);
        let component = match head {
            Some(h) => Component::Head(HeadId { layer, head: h }),
            None => Component::Mlp(layer),
        };
        let score = find(&set, component, &f.slots[0][t], None);
        let full = find(&relative_to_full, component, &f.slots[0][t], None);
        eprintln!(
            "{} @ {}: eap in the circuit {score:.5}, finite difference {numeric:.5} (relative to the full model {full:.5})",
            component.name(),
            f.slots[0][t]
        );
        // The finite difference of the f32 forward carries about 1e-4 of rounding noise, and
        // how much depends on the GEMM kernel (1.03e-4 on 0.2 @ S4 with the AVX-512 gemm
        // kernels, under 1e-4 with matrixmultiply's): 5e-3 relative, floored at 0.05, is that
        // noise bound, while a wrong gradient is off by far more.
        assert!(
            (score - numeric).abs() <= 5e-3 * numeric.abs().max(0.05),
            "{} @ {}: eap {score} vs finite difference {numeric}",
            component.name(),
            f.slots[0][t]
        );
        differs |= (score - full).abs() > 1e-2;
    }
    assert_eq!(
        find(
            &set,
            Component::Head(HeadId { layer: 1, head: 0 }),
            "END",
            None
        ),
        0.0
    );
    assert!(differs, "the circuit changed no score");
}
