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
use crate::resolve::bound::{AblationKind, EdgeAblation};
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
    fixture_in(Path::new("."), text, edge_heads)
}

/// [`fixture`] of a file in `dir` (its model and dataset paths are relative to it).
fn fixture_in(dir: &Path, text: &str, edge_heads: bool) -> Fixture {
    let resolved = resolve_source(
        "scores_test.circuit",
        text,
        dir,
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let mut session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    let config = &session.model().config;
    let mut needs = ReferenceNeeds::default();
    if edge_heads {
        // Every head's QK-edge terms, and (for circuits with path edges) every head's output.
        needs.edge_heads = (0..config.n_layers)
            .flat_map(|layer| (0..config.n_heads).map(move |head| HeadId { layer, head }))
            .collect();
        needs.head_outputs = true;
    }
    let reference = session.reference_values(&needs).unwrap().clone();
    let clean = session.clean_prompts();
    Fixture {
        ids: clean.iter().map(|p| p.ids.clone()).collect(),
        targets: clean.iter().map(|p| Targets::of(p).unwrap()).collect(),
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
            embed_edges: false,
            on_pass: None,
            prompts_per_pass: None,
            circuit: None,
        }
    }

    fn reference_ids(&self) -> Vec<Vec<u32>> {
        let prompts = self.session.reference_prompts();
        prompts.iter().map(|p| p.ids.clone()).collect()
    }

    /// The hooks that apply `plan` (edge-mean ablation of QK edges).
    fn hooks<'a>(&'a self, plan: &'a crate::plan::Plan) -> crate::ablate::PlanInterventions<'a> {
        crate::ablate::PlanInterventions {
            plan,
            reference: &self.reference,
            edge_ablation: EdgeAblation::EdgeMean,
            prompts: 0..self.ids.len(),
        }
    }

    /// [`Fixture::inputs`] under `logit_diff`, relative to the circuit `hooks` applies.
    fn inputs_in<'a>(
        &'a self,
        hooks: &'a crate::ablate::PlanInterventions<'a>,
        masks: &'a run::CircuitMasks,
        x_ref: Option<ndarray::ArrayView3<'a, f32>>,
    ) -> AttributionInputs<'a> {
        let mut inputs = self.inputs("logit_diff", x_ref);
        inputs.circuit = Some(CircuitInPlace {
            hooks,
            kept: masks.kept(hooks.plan),
        });
        inputs
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
    // z is the engine's f32 sum over keys and ref(z) an f32 mean: their sums over key terms
    // agree with them to f32 rounding, not further.
    let worst = worst_sum_gap(
        &nodes,
        &edges,
        |e| e.component,
        |e| matches!(e.component, Component::Head(_)),
    );
    eprintln!("max |Σ_k edge − node| / max |node| = {worst:.2e}");
    assert!(worst < 1e-7, "{worst}");
}

#[test]
fn path_edge_scores_out_of_a_component_sum_to_its_node_score() {
    let f = fixture(FILE, false);
    let inputs = f.inputs("logit_diff", None);
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let paths = scores(&inputs, Method::Eap, Granularity::PathEdges).unwrap();
    let worst = worst_sum_gap(&nodes, &paths, upstream_node, |_| true);
    eprintln!("max |Σ_D path(u → D) − node(u)| / max |node| = {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}

/// Moves the input embedding at token `t` of every prompt by `epsilon · (ref − embed)`:
/// `epsilon = 1` gives every input the reference embedding there.
struct EmbedNudge<'a> {
    reference: &'a ReferenceValues,
    t: usize,
    epsilon: f64,
}

impl Interventions for EmbedNudge<'_> {
    fn edit_embed(&self, embed: &mut ArrayViewMut3<f32>) {
        for b in 0..embed.dim().0 {
            let reference = self.reference.embed(b, self.t).unwrap().to_owned();
            let mut row = embed.slice_mut(s![b, self.t, ..]);
            for (x, &r) in row.iter_mut().zip(&reference) {
                *x = (*x as f64 + self.epsilon * (r as f64 - *x as f64)) as f32;
            }
        }
    }
}

#[test]
fn embed_path_edges_into_every_input_sum_to_the_derivative_along_the_reference_embedding() {
    // The embedding reaches every input additively, so its path-edge scores at a token summed
    // over the inputs are the derivative of M along (ref(embed) − embed) there: checked against
    // a central finite difference of the forward (which knows nothing of path edges).
    let f = fixture(FILE, true);
    let plain = scores(
        &f.inputs("logit_diff", None),
        Method::Eap,
        Granularity::PathEdges,
    )
    .unwrap();
    let mut inputs = f.inputs("logit_diff", None);
    inputs.embed_edges = true;
    let with_embed = scores(&inputs, Method::Eap, Granularity::PathEdges).unwrap();
    let from_embed = |e: &&Entry| {
        matches!(
            e.component,
            Component::Path {
                from: Upstream::Embed,
                ..
            }
        )
    };
    // The other edges' scores are unchanged.
    let others: Vec<&Entry> = with_embed
        .entries
        .iter()
        .filter(|e| !from_embed(e))
        .collect();
    assert_eq!(others, plain.entries.iter().collect::<Vec<_>>());
    // Member tokens (at END every prompt has the same token, so ref(embed) = embed there).
    let at = |slot: &str| f.slots[0].iter().position(|s| s == slot).unwrap();
    let epsilon = 1e-2;
    for t in [at("S3"), at("S4")] {
        let slot = &f.slots[0][t];
        let edges: Vec<&Entry> = with_embed
            .entries
            .iter()
            .filter(|e| from_embed(e) && &e.query == slot)
            .collect();
        // Every input: 3 layers × 4 heads × q, k, v, 3 MLPs, the logits.
        assert_eq!(edges.len(), 40);
        let sum: f64 = edges.iter().map(|e| e.score).sum();
        let nudge = |epsilon| EmbedNudge {
            reference: &f.reference,
            t,
            epsilon,
        };
        let numeric = (f.metric(&nudge(epsilon)) - f.metric(&nudge(-epsilon))) / (2.0 * epsilon);
        eprintln!("embed @ {slot}: Σ_D eap {sum:.5}, finite difference {numeric:.5}");
        assert!(
            numeric.abs() > 0.05,
            "a derivative the check can tell from 0"
        );
        // The bound of the node test above (f32 forward rounding).
        assert!(
            (sum - numeric).abs() <= 5e-3 * numeric.abs().max(0.05),
            "embed @ {slot}: {sum} vs {numeric}"
        );
    }
}

#[test]
fn eap_ig_with_one_step_is_eap_and_more_steps_differ() {
    let f = fixture(FILE, true);
    let model = f.session.model();
    let reference_ids = f.reference_ids();
    let x_ref = reference_embeddings(
        model,
        f.session.settings().ablation,
        &f.ids,
        &reference_ids,
        None,
    )
    .unwrap();
    let inputs = f.inputs("logit_diff", Some(x_ref.view()));
    // Bit for bit at every granularity.
    for granularity in [
        Granularity::Nodes,
        Granularity::QkEdges,
        Granularity::PathEdges,
    ] {
        let eap = scores(&inputs, Method::Eap, granularity).unwrap();
        let one = scores(&inputs, Method::EapIg { steps: 1 }, granularity).unwrap();
        assert!(eap.entries.iter().any(|e| e.score != 0.0));
        assert_eq!(eap.entries.len(), one.entries.len());
        for (a, b) in eap.entries.iter().zip(&one.entries) {
            assert_eq!(a.score.to_bits(), b.score.to_bits(), "{a:?} vs {b:?}");
        }
    }
    let eap = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
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
    let reference_ids = f.reference_ids();
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
fn scores_are_bit_identical_whatever_the_prompts_per_pass() {
    // Attribution scores a few prompts per gradient pass (peak memory): passes of 5 prompts
    // (12 prompts: 5, 5 and 2) must give the one-pass numbers bit for bit, for every method and
    // granularity, under mean and resample ablation (also `kl`, whose reference logits and
    // 1/P come per pass).
    for text in [FILE.to_string(), FILE.replace("by mean", "by resample")] {
        let f = fixture(&text, true);
        let reference_ids = f.reference_ids();
        let x_ref = reference_embeddings(
            f.session.model(),
            f.session.settings().ablation,
            &f.ids,
            &reference_ids,
            None,
        )
        .unwrap();
        for (method, metric) in [
            (Method::Eap, "logit_diff"),
            (Method::EapIg { steps: 3 }, "logit_diff"),
            (Method::EapIg { steps: 2 }, "kl"),
            (Method::Qkvo, "logit_diff"),
            (Method::Dla, "logit_diff"),
            (Method::Attention, "logit_diff"),
        ] {
            for granularity in [
                Granularity::Nodes,
                Granularity::QkEdges,
                Granularity::PathEdges,
            ] {
                if check_request(method, granularity, metric, false).is_err() {
                    continue;
                }
                let mut inputs = f.inputs(metric, Some(x_ref.view()));
                inputs.prompts_per_pass = Some(f.ids.len());
                let one = scores(&inputs, method, granularity).unwrap();
                inputs.prompts_per_pass = Some(5);
                let passes = scores(&inputs, method, granularity).unwrap();
                let what = format!("{} {} {metric}", method.name(), granularity.name());
                assert_eq!(one.entries.len(), passes.entries.len(), "{what}");
                for (a, b) in one.entries.iter().zip(&passes.entries) {
                    assert_eq!(
                        a.score.to_bits(),
                        b.score.to_bits(),
                        "{what}: {a:?} vs {b:?}"
                    );
                    assert_eq!(a.n_prompts, b.n_prompts, "{what}");
                }
                assert!(one.entries.iter().any(|e| e.score != 0.0), "{what}");
            }
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
    assert!(check_request(Method::EapIg { steps: 3 }, Granularity::Nodes, "prob", true).is_ok());
}

/// A circuit's ablations, then `then`'s edits of the embedding, the head outputs and the MLP
/// outputs (a nudge: the finite difference relative to the circuit).
struct PlanThen<'a, N> {
    plan: &'a crate::ablate::PlanInterventions<'a>,
    then: N,
}

impl<N: Interventions> Interventions for PlanThen<'_, N> {
    fn edit_embed(&self, embed: &mut ArrayViewMut3<f32>) {
        self.then.edit_embed(embed);
    }

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
        self.then.edit_z(layer, p, v, z);
    }

    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ArrayViewMut3<f32>) {
        self.plan.edit_mlp_out(layer, mlp_out);
        self.then.edit_mlp_out(layer, mlp_out);
    }

    fn needs_component_outputs(&self) -> bool {
        self.plan.needs_component_outputs()
    }

    fn head_input(
        &self,
        layer: usize,
        head: usize,
        which: crate::model::HeadInput,
        resid_pre: ndarray::ArrayView3<f32>,
        outputs: &crate::model::ComponentOutputs,
    ) -> Option<ndarray::Array3<f32>> {
        self.plan.head_input(layer, head, which, resid_pre, outputs)
    }

    fn mlp_input(
        &self,
        layer: usize,
        resid_mid: ndarray::ArrayView3<f32>,
        outputs: &crate::model::ComponentOutputs,
    ) -> Option<ndarray::Array3<f32>> {
        self.plan.mlp_input(layer, resid_mid, outputs)
    }

    fn unembed_input(
        &self,
        resid_final: ndarray::ArrayView3<f32>,
        outputs: &crate::model::ComponentOutputs,
    ) -> Option<ndarray::Array3<f32>> {
        self.plan.unembed_input(resid_final, outputs)
    }
}

#[test]
fn eap_relative_to_a_circuit_is_the_derivative_with_its_ablations_in_place() {
    let text = format!("{FILE}\ncircuit movers {{\n  0.0..3 @ END\n  mlp 0..2\n}}\n");
    let f = fixture(&text, false);
    let plan = compile_circuit(&f, Path::new("."), &text, "movers");
    let hooks = f.hooks(&plan);
    let masks = run::CircuitMasks::of(&plan, EdgeAblation::EdgeMean);
    let inputs = f.inputs_in(&hooks, &masks, None);
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
    assert_circuit_derivatives(&f, &hooks, &set, &cases);
    let differs = cases.iter().any(|&(layer, head, t)| {
        let component = match head {
            Some(h) => Component::Head(HeadId { layer, head: h }),
            None => Component::Mlp(layer),
        };
        let slot = &f.slots[0][t];
        (find(&set, component, slot, None) - find(&relative_to_full, component, slot, None)).abs()
            > 1e-2
    });
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

/// Circuit `name` of `text` (a file in `dir`) compiled on `f`'s prompts.
fn compile_circuit(f: &Fixture, dir: &Path, text: &str, name: &str) -> crate::plan::Plan {
    let resolved = resolve_source(
        "scores_test.circuit",
        text,
        dir,
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let circuit = resolved
        .file
        .circuits
        .iter()
        .find(|c| c.name == name)
        .unwrap();
    f.session.compile(circuit).unwrap()
}

/// Asserts that each case's `eap` node score relative to the circuit `hooks` applies is the
/// central finite difference of the circuit's forward along `(õ − o)`; returns how many of
/// them are not 0 (so that a test can demand some gradient got through).
fn assert_circuit_derivatives(
    f: &Fixture,
    hooks: &crate::ablate::PlanInterventions,
    set: &ScoreSet,
    cases: &[(usize, Option<usize>, usize)],
) -> usize {
    assert_derivatives(f, Some(hooks), set, cases)
}

/// [`assert_circuit_derivatives`] relative to the circuit `hooks` applies, or with `None`
/// relative to the full model.
fn assert_derivatives(
    f: &Fixture,
    hooks: Option<&crate::ablate::PlanInterventions>,
    set: &ScoreSet,
    cases: &[(usize, Option<usize>, usize)],
) -> usize {
    let epsilon = 1e-2;
    let mut nonzero = 0;
    for &(layer, head, t) in cases {
        let nudge = |epsilon| Nudge {
            reference: &f.reference,
            layer,
            head,
            t,
            epsilon,
        };
        let metric = |epsilon| match hooks {
            Some(plan) => f.metric(&PlanThen {
                plan,
                then: nudge(epsilon),
            }),
            None => f.metric(&nudge(epsilon)),
        };
        let numeric = (metric(epsilon) - metric(-epsilon)) / (2.0 * epsilon);
        let component = match head {
            Some(h) => Component::Head(HeadId { layer, head: h }),
            None => Component::Mlp(layer),
        };
        let score = find(set, component, &f.slots[0][t], None);
        let relative_to = if hooks.is_some() {
            "the circuit"
        } else {
            "the full model"
        };
        eprintln!(
            "{} @ {}: eap relative to {relative_to} {score:.6}, finite difference {numeric:.6}",
            component.name(),
            f.slots[0][t]
        );
        // The f32 forward's rounding noise bound, as in the tests above.
        assert!(
            (score - numeric).abs() <= 5e-3 * numeric.abs().max(0.05),
            "{} @ {}: eap {score} vs finite difference {numeric}",
            component.name(),
            f.slots[0][t]
        );
        nonzero += usize::from(score.abs() > 1e-3);
    }
    nonzero
}

/// Max over the nodes `include` picks of |Σ parts − node| / max |node|, `parts` grouped by
/// the node `group` names (every picked node must have parts).
fn worst_sum_gap(
    nodes: &ScoreSet,
    parts: &ScoreSet,
    group: impl Fn(&Entry) -> Component,
    include: impl Fn(&Entry) -> bool,
) -> f64 {
    let mut sums: BTreeMap<(Component, String), f64> = BTreeMap::new();
    for e in &parts.entries {
        *sums.entry((group(e), e.query.clone())).or_insert(0.0) += e.score;
    }
    let scale = nodes
        .entries
        .iter()
        .map(|e| e.score.abs())
        .fold(0.0, f64::max);
    nodes
        .entries
        .iter()
        .filter(|e| include(e))
        .map(|e| (sums[&(e.component, e.query.clone())] - e.score).abs() / scale)
        .fold(0.0, f64::max)
}

/// The `eap` QK-edge and path-edge scores of `inputs`, and how far each falls from summing to
/// its `nodes` ([`worst_sum_gap`]): QK edges into a query sum to the head there, path edges out
/// of a component to the component.
fn sum_gaps(inputs: &AttributionInputs, nodes: &ScoreSet) -> (ScoreSet, ScoreSet, f64, f64) {
    let edges = scores(inputs, Method::Eap, Granularity::QkEdges).unwrap();
    let qk_gap = worst_sum_gap(
        nodes,
        &edges,
        |e| e.component,
        |e| matches!(e.component, Component::Head(_)),
    );
    let paths = scores(inputs, Method::Eap, Granularity::PathEdges).unwrap();
    let path_gap = worst_sum_gap(nodes, &paths, upstream_node, |_| true);
    (edges, paths, qk_gap, path_gap)
}

fn upstream_node(e: &Entry) -> Component {
    match e.component {
        Component::Path {
            from: Upstream::Head(h),
            ..
        } => Component::Head(h),
        Component::Path {
            from: Upstream::Mlp(l),
            ..
        } => Component::Mlp(l),
        Component::Path {
            from: Upstream::Embed,
            ..
        } => panic!("no score leaves the embedding: {e:?}"),
        c => c,
    }
}

/// A circuit with QK edges on a layer-1 head (its constant terms stop gradients into layer 0
/// at S4 and END) and path edges into every kind of input, on the built-in model.
const EDGES: &str = r#"
circuit edges {
  0.0, 0.1 @ END
  0.2, 0.3 @ *
  edge 1.0: S4 -> END, END -> END
  1.1 @ *
  2.0 @ END
  mlp 0 @ S4, END
  mlp 1, 2 @ END
  edge 0.2, mlp 0 -> 1.1.q
  edge 0.3 -> 1.1.k
  edge 0.1 -> 1.1.v @ END
  edge 0.0 -> mlp 1
  edge 1.0, 1.1, mlp 1, mlp 2 -> logits
}
"#;

#[test]
fn eap_relative_to_a_circuit_with_edges_is_the_derivative_of_its_forward() {
    let text = format!("{FILE}{EDGES}");
    let f = fixture(&text, true);
    let plan = compile_circuit(&f, Path::new("."), &text, "edges");
    assert!(plan.has_path_edges() && plan.qk_queries.iter().any(|q| !q.is_empty()));
    let hooks = f.hooks(&plan);
    let masks = run::CircuitMasks::of(&plan, EdgeAblation::EdgeMean);
    let inputs = f.inputs_in(&hooks, &masks, None);
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let end = f.ids[0].len() - 1;
    let s4 = f.slots[0].iter().position(|s| s == "S4").unwrap();
    let s3 = f.slots[0].iter().position(|s| s == "S3").unwrap();
    let cases = [
        (0, Some(0), end), // only into mlp 1 (and 1.0's kept keys)
        (0, Some(1), end), // into 1.1.v at END only
        (0, Some(2), s4),  // into 1.1.q; through 1.0's kept key S4
        (0, Some(3), s3),  // into 1.1.k only
        (0, Some(3), s4),
        (0, None, s4), // mlp 0 into 1.1.q
        (1, Some(0), end),
        (1, Some(1), end),
        (1, Some(1), s4),
        (1, None, end),
        (2, Some(0), end), // reaches the logits only through mlp 2
        (2, None, end),
    ];
    let nonzero = assert_circuit_derivatives(&f, &hooks, &nodes, &cases);
    assert!(nonzero >= 8, "only {nonzero} of the cases have a gradient");

    // The sum identities hold relative to the circuit too: QK edges into a query sum to the
    // node, path edges out of a component sum to it.
    let (edges, paths, qk_gap, path_gap) = sum_gaps(&inputs, &nodes);
    eprintln!("relative to the circuit: QK gap {qk_gap:.2e}, path gap {path_gap:.2e}");
    assert!(qk_gap < 1e-6, "{qk_gap}");
    assert!(path_gap < 1e-4, "{path_gap}");
    // An ablated QK term or cut path already holds its ablated value: it scores exactly 0.
    let one_zero = HeadId { layer: 1, head: 0 };
    let s2 = &f.slots[0][f.slots[0].iter().position(|s| s == "S2").unwrap()];
    assert_eq!(
        find(&edges, Component::Head(one_zero), "END", Some(s2)),
        0.0
    );
    assert_ne!(
        find(&edges, Component::Head(one_zero), "END", Some("S4")),
        0.0
    );
    let cut = Component::Path {
        from: Upstream::Head(HeadId { layer: 0, head: 2 }),
        to: Downstream::Logits,
    };
    assert_eq!(find(&paths, cut, "END", None), 0.0);
}

#[test]
fn eap_relative_to_a_circuit_under_grouped_query_attention_follows_each_heads_own_key() {
    // stories260K: 8 query heads share 4 key/value heads. A path edge into 2.2.k gives head
    // 2.2 a key of its own, which the cache (one key per key/value head, its first query
    // head's) cannot hold for 2.3 beside it.
    let dir = Path::new("tests/fixtures/eval");
    // Zero ablation makes a rebuilt input (one writer and the embedding) far from the shared
    // stream, so that a key computed from the wrong one would show.
    let text = r#"model "../../../../shared/models/stories260K"
dataset friends = "friends.jsonl"
reference friends.corrupt
ablate heads by zero
metric logit_diff

circuit gqa {
  0.*, 1.* @ *
  2.1, 2.2, 2.3 @ *
  edge 3.1: S1 -> END, END -> END
  4.* @ END
  edge 0.3 -> 2.2.k
  edge 1.0 -> 2.3.v
  edge 0.5 -> 2.1.q
  edge 2.1, 2.3, 3.1, 4.0 -> logits
}
"#;
    let f = fixture_in(dir, text, true);
    let plan = compile_circuit(&f, dir, text, "gqa");
    let hooks = f.hooks(&plan);
    let masks = run::CircuitMasks::of(&plan, EdgeAblation::EdgeMean);
    let mut inputs = f.inputs_in(&hooks, &masks, None);
    inputs.mlps_in_scope = false;
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let end = f.ids[0].len() - 1;
    let s1 = f.slots[0].iter().position(|s| s == "S1").unwrap();
    let cases = [
        (0, Some(3), s1),
        (0, Some(3), end),
        (1, Some(2), s1),
        (1, Some(2), end),
        (1, Some(0), end),
        (0, Some(5), end),
        (2, Some(2), end),
        (2, Some(3), end),
        (2, Some(1), end),
        (3, Some(1), end),
        (1, Some(5), end), // reaches nothing that reaches the logits
    ];
    let nonzero = assert_circuit_derivatives(&f, &hooks, &nodes, &cases);
    assert!(nonzero >= 5, "only {nonzero} of the cases have a gradient");
}

/// Input embeddings `embed`, and `epsilon · delta` added to head `head`'s output at token `t`
/// (`delta` `(B, d)` fixed, unlike [`Nudge`]'s).
struct AtPoint<'a> {
    embed: ndarray::ArrayView3<'a, f32>,
    layer: usize,
    head: usize,
    t: usize,
    delta: ndarray::ArrayView2<'a, f64>,
    epsilon: f64,
}

impl Interventions for AtPoint<'_> {
    fn edit_embed(&self, embed: &mut ArrayViewMut3<f32>) {
        embed.assign(&self.embed);
    }

    fn edit_z(
        &self,
        layer: usize,
        _: ArrayView4<f32>,
        _: ArrayView4<f32>,
        z: &mut ArrayViewMut4<f32>,
    ) {
        if layer != self.layer {
            return;
        }
        for b in 0..z.dim().0 {
            let mut row = z.slice_mut(s![b, self.t, self.head, ..]);
            for (o, &d) in row.iter_mut().zip(self.delta.row(b)) {
                *o = (*o as f64 + self.epsilon * d) as f32;
            }
        }
    }
}

#[test]
fn eap_ig_relative_to_a_circuit_averages_the_circuits_gradients_along_the_path() {
    // With m = 2 the points are α = ½ and 1: the score is ½ (∂M/∂z(½) + ∂M/∂z(1)) · (õ − o),
    // each derivative the finite difference of the circuit's forward at that input embedding
    // along the fixed δ = õ − o of the circuit's clean forward.
    let text = format!("{FILE}{EDGES}");
    let f = fixture(&text, true);
    let plan = compile_circuit(&f, Path::new("."), &text, "edges");
    let hooks = f.hooks(&plan);
    let model = f.session.model();
    let reference_ids = f.reference_ids();
    let x_ref =
        reference_embeddings(model, AblationKind::Mean, &f.ids, &reference_ids, None).unwrap();
    let masks = run::CircuitMasks::of(&plan, EdgeAblation::EdgeMean);
    let inputs = f.inputs_in(&hooks, &masks, Some(x_ref.view()));
    let ig = scores(&inputs, Method::EapIg { steps: 2 }, Granularity::Nodes).unwrap();
    let clean = model
        .forward(
            &f.ids,
            &ForwardOptions {
                all_logits: false,
                cache: true,
            },
            &hooks,
        )
        .unwrap()
        .cache
        .unwrap();
    let x = &clean.embed; // (B, T, D)
    let midpoint = &x_ref + &((x - &x_ref) * 0.5f32); // (B, T, D)
    let end = f.ids[0].len() - 1;
    let s4 = f.slots[0].iter().position(|s| s == "S4").unwrap();
    let mut nonzero = 0;
    for (layer, head, t) in [
        (0, 1, end),
        (0, 2, s4),
        (1, 0, end),
        (1, 1, end),
        (2, 0, end),
    ] {
        let d_head = clean.layers[layer].z.dim().3;
        let delta = ndarray::Array2::from_shape_fn((f.ids.len(), d_head), |(b, i)| {
            let mut r = vec![0.0f64; d_head];
            f.reference.add_z(layer, b, t, head, &mut r);
            r[i] - clean.layers[layer].z[[b, t, head, i]] as f64
        }); // (B, d)
        let derivative = |embed: ndarray::ArrayView3<f32>| {
            let at = |epsilon| PlanThen {
                plan: &hooks,
                then: AtPoint {
                    embed,
                    layer,
                    head,
                    t,
                    delta: delta.view(),
                    epsilon,
                },
            };
            let epsilon = 1e-2;
            (f.metric(&at(epsilon)) - f.metric(&at(-epsilon))) / (2.0 * epsilon)
        };
        let numeric = 0.5 * (derivative(midpoint.view()) + derivative(x.view()));
        let component = Component::Head(HeadId { layer, head });
        let score = find(&ig, component, &f.slots[0][t], None);
        eprintln!(
            "{} @ {}: eap-ig (m = 2) in the circuit {score:.6}, finite differences {numeric:.6}",
            component.name(),
            f.slots[0][t]
        );
        assert!(
            (score - numeric).abs() <= 5e-3 * numeric.abs().max(0.05),
            "{}: {score} vs {numeric}",
            component.name()
        );
        nonzero += usize::from(score.abs() > 1e-3);
    }
    assert!(nonzero >= 3, "{nonzero}");
}

#[test]
fn resample_qk_edge_scores_from_the_reference_attention_equal_the_stored_terms() {
    // Under resample the stored reference terms are (R, T, T, d) per head; computing them
    // while scoring from the reference pass's own pattern and values
    // (`ReferenceNeeds::source_attention`) must give the same numbers, bit for bit.
    let text = FILE.replace("by mean", "by resample");
    let f = fixture(&text, true);
    let stored = scores(
        &f.inputs("logit_diff", None),
        Method::Eap,
        Granularity::QkEdges,
    )
    .unwrap();
    let mut g = fixture(&text, false);
    let needs = ReferenceNeeds {
        source_attention: true,
        ..Default::default()
    };
    g.reference = g.session.reference_values(&needs).unwrap().clone();
    let from_attention = scores(
        &g.inputs("logit_diff", None),
        Method::Eap,
        Granularity::QkEdges,
    )
    .unwrap();
    assert_eq!(stored.entries.len(), from_attention.entries.len());
    for (a, b) in stored.entries.iter().zip(&from_attention.entries) {
        assert_eq!(a.score.to_bits(), b.score.to_bits(), "{a:?} vs {b:?}");
    }
    assert!(stored.entries.iter().any(|e| e.score.abs() > 1e-3));
}

/// Qwen3 (each head's q and k RMSNormed with its own gain before rotary; 4 query heads on 2
/// key/value heads; a 3-key window on layers 1 and 2, bound by these 7-token prompts): eap node
/// scores are the derivative of the forward along `(õ − o)`, relative to the full model and
/// relative to a circuit whose path edges rebuild q, k (a key of its own for 1.2, whose group
/// shares its key with 1.3) and v inputs; QK edges and path edges sum to their nodes.
#[test]
fn eap_on_qwen3_goes_through_its_per_head_qk_norms() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for (prompt, answer, distractor) in [
        ("1234567", "8", "9"),
        ("2345678", "9", "1"),
        ("3456789", "1", "2"),
    ] {
        lines.push_str(&format!(
            "{{\"prompt\": \"{prompt}\", \"answer\": \"{answer}\", \"distractor\": \"{distractor}\"}}\n"
        ));
    }
    std::fs::write(dir.path().join("digits.jsonl"), lines).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen3-bf16");
    let text = format!(
        r#"model "{}"
dataset digits = "digits.jsonl"
reference digits
ablate heads and mlps by mean
metric logit_diff

circuit normed {{
  0.* @ *
  1.0, 1.2, 1.3 @ *
  2.1 @ END
  mlp 0, 1, 2 @ *
  edge 0.0 -> 1.0.q
  edge 0.1, mlp 0 -> 1.2.k
  edge 0.3 -> 2.1.v
  edge 1.0, 1.2, 2.1, mlp 2 -> logits
}}
"#,
        model.display()
    );
    let f = fixture_in(dir.path(), &text, true);
    assert!(f.session.model().config.has_qk_norm());
    let end = f.ids[0].len() - 1;
    assert_eq!(end, 6);

    // Relative to the full model.
    let inputs = f.inputs("logit_diff", None);
    let nodes = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let cases = [
        (0, Some(0), end),
        (0, Some(3), 2), // reaches END only through the window of later layers' keys
        (1, Some(2), end),
        (1, Some(1), 4),
        (0, None, 3),
        (2, Some(3), end),
    ];
    let nonzero = assert_derivatives(&f, None, &nodes, &cases);
    assert!(nonzero >= 4, "only {nonzero} of the cases have a gradient");
    let (_, _, qk_gap, path_gap) = sum_gaps(&inputs, &nodes);
    eprintln!("qwen3: QK gap {qk_gap:.2e}, path gap {path_gap:.2e}");
    assert!(qk_gap < 1e-6, "{qk_gap}");
    assert!(path_gap < 1e-4, "{path_gap}");

    // Relative to the circuit: its rebuilt q, k and v inputs are normed as the forward did.
    let plan = compile_circuit(&f, dir.path(), &text, "normed");
    assert!(plan.has_path_edges());
    let hooks = f.hooks(&plan);
    let masks = run::CircuitMasks::of(&plan, EdgeAblation::EdgeMean);
    let inputs = f.inputs_in(&hooks, &masks, None);
    let in_circuit = scores(&inputs, Method::Eap, Granularity::Nodes).unwrap();
    let cases = [
        (0, Some(0), end), // into 1.0.q only
        (0, Some(0), 3),
        (0, Some(1), end), // into 1.2.k only: 1.2's own key
        (0, Some(1), 4),
        (0, None, 4),      // mlp 0 into 1.2.k
        (0, Some(3), end), // into 2.1.v
        (1, Some(2), end),
        (1, Some(3), end),
        (2, Some(1), end),
    ];
    let nonzero = assert_circuit_derivatives(&f, &hooks, &in_circuit, &cases);
    assert!(nonzero >= 5, "only {nonzero} of the cases have a gradient");
}
