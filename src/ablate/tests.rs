//! Hook-level tests on hand-made activations: the formulas of docs/semantics.md, without a model.

use ndarray::{s, Array3, Array4};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::model::{Interventions, ResidualTopology};
use crate::plan::{Plan, PlanShape, QkQuery};
use crate::resolve::bound::{AblationKind, EdgeAblation, HeadId, Scope};

pub(super) const T: usize = 5;
pub(super) const H: usize = 2;
pub(super) const D_HEAD: usize = 3;
pub(super) const D_MODEL: usize = 4;

/// Random causal attention: pattern `(B, H, T, T)`, values `(B, T, H, d)`, `z = pattern · v`.
pub(super) struct Attention {
    pub(super) pattern: Array4<f32>,
    pub(super) v: Array4<f32>,
    pub(super) z: Array4<f32>,
    pub(super) mlp_out: Array3<f32>,
    pub(super) head_out: Array4<f32>,
}

fn attention(n: usize, seed: u64) -> Attention {
    attention_of_len(n, T, seed)
}

/// [`attention`] over `t` tokens (label-alignment tests use prompts of other lengths).
pub(super) fn attention_of_len(n: usize, t: usize, seed: u64) -> Attention {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pattern = Array4::<f32>::zeros((n, H, t, t));
    for b in 0..n {
        for h in 0..H {
            for q in 0..t {
                let w: Vec<f32> = (0..=q).map(|_| rng.random::<f32>() + 0.1).collect();
                let total: f32 = w.iter().sum();
                for k in 0..=q {
                    pattern[[b, h, q, k]] = w[k] / total;
                }
            }
        }
    }
    let v = Array4::from_shape_fn((n, t, H, D_HEAD), |_| rng.random::<f32>() * 2.0 - 1.0);
    let mut z = Array4::<f32>::zeros((n, t, H, D_HEAD));
    for b in 0..n {
        for h in 0..H {
            for q in 0..t {
                for k in 0..=q {
                    for i in 0..D_HEAD {
                        z[[b, q, h, i]] += pattern[[b, h, q, k]] * v[[b, k, h, i]];
                    }
                }
            }
        }
    }
    let mlp_out = Array3::from_shape_fn((n, t, D_MODEL), |_| rng.random::<f32>());
    let head_out = Array4::from_shape_fn((n, t, H, D_MODEL), |_| rng.random::<f32>());
    Attention {
        pattern,
        v,
        z,
        mlp_out,
        head_out,
    }
}

/// The reference forward pass's view of hand-made activations.
pub(super) fn layer(acts: &Attention) -> LayerActivations<'_> {
    LayerActivations {
        z: acts.z.view(),
        pattern: Some(acts.pattern.view()),
        v: Some(acts.v.view()),
        mlp_out: acts.mlp_out.view(),
        head_out: Some(acts.head_out.view()),
    }
}

fn reference(kind: AblationKind, acts: &Attention, n_eval: usize) -> ReferenceValues {
    let layer = LayerActivations {
        z: acts.z.view(),
        pattern: Some(acts.pattern.view()),
        v: Some(acts.v.view()),
        mlp_out: acts.mlp_out.view(),
        head_out: Some(acts.head_out.view()),
    };
    let n_ref = acts.z.shape()[0];
    let needs = ReferenceNeeds {
        edge_heads: [HeadId { layer: 0, head: 1 }].into(),
        head_outputs: true,
        source_attention: false,
    };
    ReferenceValues::build(
        kind,
        &[layer],
        &vec![T; n_ref],
        &vec![T; n_eval],
        &|b| format!("prompt {b}"),
        &needs,
    )
    .unwrap()
}

pub(super) const SHAPE: PlanShape = PlanShape {
    n_layers: 1,
    n_heads: H,
    residual: ResidualTopology::Sequential,
};

/// Runs edit_z of `plan` on the clean activations and returns the edited z.
pub(super) fn edited_z(
    plan: &Plan,
    refs: &ReferenceValues,
    clean: &Attention,
    edge: EdgeAblation,
) -> Array4<f32> {
    let hooks = PlanInterventions {
        plan,
        reference: refs,
        edge_ablation: edge,
        prompts: 0..clean.z.shape()[0],
    };
    let mut z = clean.z.clone();
    hooks.edit_z(0, clean.pattern.view(), clean.v.view(), &mut z.view_mut());
    z
}

fn full_plan(n: usize) -> Plan {
    Plan::full(SHAPE, &vec![T; n], Scope::HeadsAndMlps)
}

fn mean_z(refs: &Attention) -> Array3<f32> {
    // (T, H, d), in f64 as the statistics are taken.
    let n = refs.z.shape()[0] as f64;
    refs.z
        .mapv(|x| x as f64)
        .sum_axis(ndarray::Axis(0))
        .mapv(|x| (x / n) as f32)
}

#[test]
fn node_ablation_replaces_z_by_the_reference_mean_at_unkept_positions() {
    let clean = attention(2, 1);
    let refs_acts = attention(3, 2);
    let refs = reference(AblationKind::Mean, &refs_acts, 2);
    let mut plan = full_plan(2);
    plan.head_keep[0][[1, 3, 0]] = false;
    let z = edited_z(&plan, &refs, &clean, EdgeAblation::EdgeMean);
    let mean = mean_z(&refs_acts);
    assert_eq!(z.slice(s![1, 3, 0, ..]), mean.slice(s![3, 0, ..]));
    // Everything else untouched.
    let mut expected = clean.z.clone();
    expected
        .slice_mut(s![1, 3, 0, ..])
        .assign(&mean.slice(s![3, 0, ..]));
    assert_eq!(z, expected);
}

#[test]
fn zero_and_resample_ablation() {
    let clean = attention(3, 1);
    let mut plan = full_plan(3);
    for b in 0..3 {
        plan.head_keep[0][[b, 4, 1]] = false;
    }
    let zero = edited_z(
        &plan,
        &ReferenceValues::zero(3),
        &clean,
        EdgeAblation::EdgeMean,
    );
    assert!(zero.slice(s![.., 4, 1, ..]).iter().all(|&x| x == 0.0));
    // Resample pairs one-to-one: three reference prompts for three prompts.
    let refs_acts = attention(3, 2);
    let resample = reference(AblationKind::Resample, &refs_acts, 3);
    let z = edited_z(&plan, &resample, &clean, EdgeAblation::EdgeMean);
    for b in 0..3 {
        // Prompt b is paired with reference prompt b.
        assert_eq!(z.slice(s![b, 4, 1, ..]), refs_acts.z.slice(s![b, 4, 1, ..]));
    }
}

fn edge_plan(n: usize, query: usize, keys: Vec<usize>) -> Plan {
    let mut plan = full_plan(n);
    for b in 0..n {
        plan.qk_queries[0].push(QkQuery {
            prompt: b,
            query,
            head: 1,
            keys: keys.clone(),
        });
    }
    plan
}

#[test]
fn every_edge_kept_is_the_clean_node_and_none_kept_is_the_ablated_node() {
    let clean = attention(2, 3);
    for kind in [
        AblationKind::Mean,
        AblationKind::Resample,
        AblationKind::Zero,
    ] {
        let refs_acts = attention(2, 4); // one reference prompt per prompt (resample)
        let refs = match kind {
            AblationKind::Zero => ReferenceValues::zero(2),
            _ => reference(kind, &refs_acts, 2),
        };
        let all = edited_z(
            &edge_plan(2, 3, vec![0, 1, 2, 3]),
            &refs,
            &clean,
            EdgeAblation::EdgeMean,
        );
        assert_eq!(all, clean.z, "{kind:?}: every edge kept");

        let none = edited_z(
            &edge_plan(2, 3, vec![]),
            &refs,
            &clean,
            EdgeAblation::EdgeMean,
        );
        let mut node_plan = full_plan(2);
        node_plan.head_keep[0][[0, 3, 1]] = false;
        node_plan.head_keep[0][[1, 3, 1]] = false;
        let node = edited_z(&node_plan, &refs, &clean, EdgeAblation::EdgeMean);
        assert_eq!(none, node, "{kind:?}: no edge kept");
    }
}

#[test]
fn some_edges_kept_follows_the_edge_mean_formula() {
    let clean = attention(2, 5);
    let refs_acts = attention(4, 6);
    let refs = reference(AblationKind::Mean, &refs_acts, 2);
    for keys in [vec![1], vec![0, 2, 4], vec![0, 1, 3, 4]] {
        let z = edited_z(
            &edge_plan(2, 4, keys.clone()),
            &refs,
            &clean,
            EdgeAblation::EdgeMean,
        );
        for b in 0..2 {
            for i in 0..D_HEAD {
                // Spelled out: kept terms clean, dropped terms as their reference mean.
                let mut expected = 0f64;
                for k in 0..=4 {
                    if keys.contains(&k) {
                        expected += (clean.pattern[[b, 1, 4, k]] * clean.v[[b, k, 1, i]]) as f64;
                    } else {
                        let n = refs_acts.z.shape()[0];
                        let mean: f64 = (0..n)
                            .map(|r| {
                                (refs_acts.pattern[[r, 1, 4, k]] * refs_acts.v[[r, k, 1, i]]) as f64
                            })
                            .sum::<f64>()
                            / n as f64;
                        expected += mean;
                    }
                }
                let got = z[[b, 4, 1, i]] as f64;
                assert!(
                    (got - expected).abs() < 1e-6,
                    "keys {keys:?}: {got} vs {expected}"
                );
            }
        }
        // Other heads and queries untouched.
        assert_eq!(
            z.slice(s![.., ..4, .., ..]),
            clean.z.slice(s![.., ..4, .., ..])
        );
        assert_eq!(z.slice(s![.., 4, 0, ..]), clean.z.slice(s![.., 4, 0, ..]));
    }
}

#[test]
fn knockout_blocks_dropped_scores_and_leaves_z_alone() {
    let clean = attention(1, 7);
    let refs = ReferenceValues::zero(1);
    let plan = edge_plan(1, 3, vec![1, 3]);
    let hooks = PlanInterventions {
        plan: &plan,
        reference: &refs,
        edge_ablation: EdgeAblation::Knockout,
        prompts: 0..1,
    };
    let mut scores = Array4::<f32>::zeros((1, H, T, T));
    hooks.edit_scores(0, &mut scores.view_mut());
    let blocked: Vec<(usize, usize, usize)> = scores
        .indexed_iter()
        .filter(|(_, &x)| x == f32::NEG_INFINITY)
        .map(|((_, h, q, k), _)| (h, q, k))
        .collect();
    assert_eq!(blocked, vec![(1, 3, 0), (1, 3, 2)]);
    assert_eq!(
        edited_z(&plan, &refs, &clean, EdgeAblation::Knockout),
        clean.z
    );
}

#[test]
fn mlp_ablation_and_batch_offsets() {
    let refs_acts = attention(4, 8);
    let refs = reference(AblationKind::Resample, &refs_acts, 4);
    let mut plan = full_plan(4);
    plan.mlp_keep[0][[3, 2]] = false;
    // A batch holding prompts 2 and 3 only: row 1 is prompt 3, paired with reference 3.
    let hooks = PlanInterventions {
        plan: &plan,
        reference: &refs,
        edge_ablation: EdgeAblation::EdgeMean,
        prompts: 2..4,
    };
    let mut mlp_out = Array3::<f32>::from_elem((2, T, D_MODEL), 7.0);
    hooks.edit_mlp_out(0, &mut mlp_out.view_mut());
    assert_eq!(
        mlp_out.slice(s![1, 2, ..]),
        refs_acts.mlp_out.slice(s![3, 2, ..])
    );
    assert_eq!(mlp_out.iter().filter(|&&x| x != 7.0).count(), D_MODEL);
}

#[test]
fn reference_length_errors_name_both_lengths() {
    let acts = attention(2, 9);
    let layer = LayerActivations {
        z: acts.z.view(),
        pattern: Some(acts.pattern.view()),
        v: Some(acts.v.view()),
        mlp_out: acts.mlp_out.view(),
        head_out: Some(acts.head_out.view()),
    };
    let err = ReferenceValues::build(
        AblationKind::Mean,
        &[layer],
        &[T, T],
        &[T, T + 2],
        &|b| format!("prompt {b} (\"x\")"),
        &ReferenceNeeds::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("prompt 1") && text.contains("7 tokens") && text.contains("is 5 tokens"),
        "{text}"
    );
}

#[test]
fn reference_values_round_trip_through_safetensors() {
    let acts = attention(4, 10);
    for kind in [AblationKind::Mean, AblationKind::Resample] {
        let values = reference(kind, &acts, 4);
        let bytes = values.to_safetensors();
        assert_eq!(ReferenceValues::from_safetensors(&bytes), Some(values));
    }
    assert_eq!(
        ReferenceValues::from_safetensors(b"not a safetensors file"),
        None
    );
}

#[test]
fn resample_pairs_one_to_one_so_a_count_mismatch_is_an_error() {
    use miette::Diagnostic;
    let acts = attention(2, 11);
    let err = ReferenceValues::build(
        AblationKind::Resample,
        &[layer(&acts)],
        &[T, T],
        &[T, T, T],
        &|b| format!("prompt {b}"),
        &ReferenceNeeds::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.code().unwrap().to_string(),
        "circuit::data::reference_count"
    );
    assert!(err.to_string().contains("3 prompts but 2"), "{err}");
}
