//! `align by label` on hand-made activations: slot assignment, means over reference prompts of
//! different lengths computed independently here, the missing-slot errors, and equality with
//! position alignment when every prompt has its labels at the same indices.

use miette::Diagnostic;
use ndarray::{s, Array3};

use super::align::{LabelAlignment, LabelReferenceBuilder};
use super::tests::{attention_of_len, edited_z, layer, Attention, D_MODEL, H, SHAPE, T};
use super::*;
use crate::data::slots::{assign_slots, PromptSlots};
use crate::model::Interventions;
use crate::plan::{Plan, QkQuery};
use crate::resolve::bound::{AblationKind, EdgeAblation, HeadId, Scope};

fn labels(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(n, i)| (n.to_string(), *i)).collect()
}

fn slot_names(len: usize, list: &[(&str, usize)]) -> Vec<String> {
    assign_slots(len, &labels(list))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn slots_count_from_the_nearest_label_at_or_before_each_token() {
    assert_eq!(
        slot_names(7, &[("S2", 4), ("S1", 2)]),
        ["start", "start+1", "S1", "S1+1", "S2", "S2+1", "END"]
    );
    // A label on token 0: nothing before it, so no `start`.
    assert_eq!(slot_names(3, &[("IO", 0)]), ["IO", "IO+1", "END"]);
    // No label at all: everything hangs off `start` but the last token, which is END.
    assert_eq!(slot_names(3, &[]), ["start", "start+1", "END"]);
    // A label beyond the prompt is ignored.
    assert_eq!(slot_names(2, &[("S9", 5)]), ["start", "END"]);
}

#[test]
fn slot_ties_go_to_end_then_to_the_first_name_in_byte_order() {
    // "1 2 3 4": S4 and END on the last token: END names it.
    assert_eq!(
        slot_names(4, &[("S1", 0), ("S4", 3)]),
        ["S1", "S1+1", "S1+2", "END"]
    );
    // Two labels sharing a span: the first name in byte order names it, whatever the order given.
    assert_eq!(
        slot_names(5, &[("S2", 1), ("IO", 1)]),
        ["start", "IO", "IO+1", "IO+2", "END"]
    );
    assert_eq!(
        slot_names(5, &[("IO", 1), ("S2", 1)]),
        ["start", "IO", "IO+1", "IO+2", "END"]
    );
    // Byte order: upper case before lower case.
    assert_eq!(slot_names(3, &[("b", 1), ("Z", 1)]), ["start", "Z", "END"]);
    // A one-token prompt is END alone.
    assert_eq!(slot_names(1, &[("S1", 0)]), ["END"]);
}

const EDGE_HEAD: HeadId = HeadId { layer: 0, head: 1 };

fn needs(edges: bool) -> ReferenceNeeds {
    ReferenceNeeds {
        edge_heads: if edges {
            [EDGE_HEAD].into()
        } else {
            Default::default()
        },
        head_outputs: true,
        source_attention: false,
    }
}

fn label_values(
    kind: AblationKind,
    alignment: &LabelAlignment,
    refs: &Attention,
    edges: bool,
) -> Result<ReferenceValues, ReferenceError> {
    let mut builder = LabelReferenceBuilder::new(kind, needs(edges), alignment)?;
    builder.add_batch(&[layer(refs)]);
    Ok(builder.finish())
}

/// Reference prompt 0 has `S1` at token 1 (5 tokens); reference prompt 1 has one more token
/// before `S1` (6 tokens). The evaluated prompts have the layout of reference prompt 0.
fn uneven_reference() -> LabelAlignment {
    LabelAlignment {
        evaluated: (0..2)
            .map(|b| PromptSlots::new(format!("prompt {b}"), T, &labels(&[("S1", 1)])))
            .collect(),
        reference: vec![
            PromptSlots::new("reference prompt 0", 5, &labels(&[("S1", 1)])),
            PromptSlots::new("reference prompt 1", 6, &labels(&[("S1", 2)])),
        ],
    }
}

/// Evaluated token `t` ↦ the token of reference prompts 0 and 1 at the same slot.
const SAME_SLOT: [(usize, usize); T] = [(0, 0), (1, 2), (2, 3), (3, 4), (4, 5)];

#[test]
fn mean_by_label_averages_each_slot_over_reference_prompts_of_different_lengths() {
    let refs = attention_of_len(2, 6, 21); // reference prompt 0 only uses tokens 0..5
    let clean = attention_of_len(2, T, 22);
    let alignment = uneven_reference();
    let values = label_values(AblationKind::Mean, &alignment, &refs, true).unwrap();

    // Node ablation everywhere: z at every evaluated token is the mean of its slot.
    let empty = Plan::empty(SHAPE, &[T, T], Scope::HeadsAndMlps);
    let z = edited_z(&empty, &values, &clean, EdgeAblation::EdgeMean);
    let mean = |a: f32, b: f32| ((a as f64 + b as f64) * 0.5) as f32;
    for b in 0..2 {
        for (t, (t0, t1)) in SAME_SLOT.iter().copied().enumerate() {
            for h in 0..H {
                for i in 0..z.shape()[3] {
                    assert_eq!(
                        z[[b, t, h, i]],
                        mean(refs.z[[0, t0, h, i]], refs.z[[1, t1, h, i]]),
                        "prompt {b} token {t} head {h}"
                    );
                }
            }
        }
    }
    // Not what aligning by index would give (token 1 is `start+1` in reference prompt 1).
    assert_ne!(
        z[[0, 1, 0, 0]],
        mean(refs.z[[0, 1, 0, 0]], refs.z[[1, 1, 0, 0]])
    );

    // MLP outputs and head outputs the same way.
    let hooks = PlanInterventions {
        plan: &empty,
        reference: &values,
        edge_ablation: EdgeAblation::EdgeMean,
        prompts: 0..2,
    };
    let mut mlp_out = Array3::<f32>::from_elem((2, T, D_MODEL), 7.0);
    hooks.edit_mlp_out(0, &mut mlp_out.view_mut());
    for (t, (t0, t1)) in SAME_SLOT.iter().copied().enumerate() {
        for i in 0..D_MODEL {
            let expected = mean(refs.mlp_out[[0, t0, i]], refs.mlp_out[[1, t1, i]]);
            assert_eq!(mlp_out[[1, t, i]], expected, "mlp token {t}");
            let head_out = values.head_out(0, 1, t, 1).unwrap();
            let expected = mean(refs.head_out[[0, t0, 1, i]], refs.head_out[[1, t1, 1, i]]);
            assert_eq!(head_out[i], expected, "head output token {t}");
        }
    }

    // The values round-trip through the on-disk cache format, slot-layout flags included.
    let bytes = values.to_safetensors();
    assert_eq!(ReferenceValues::from_safetensors(&bytes), Some(values));
}

fn edge_plan(n: usize, query: usize, keys: Vec<usize>) -> Plan {
    let mut plan = Plan::full(SHAPE, &vec![T; n], Scope::HeadsAndMlps);
    for b in 0..n {
        plan.qk_queries[0].push(QkQuery {
            prompt: b,
            query,
            head: EDGE_HEAD.head,
            keys: keys.clone(),
        });
    }
    plan
}

#[test]
fn edge_mean_by_label_averages_each_query_key_slot_pair() {
    let refs = attention_of_len(2, 6, 23);
    let clean = attention_of_len(2, T, 24);
    let values = label_values(AblationKind::Mean, &uneven_reference(), &refs, true).unwrap();
    let head = EDGE_HEAD.head;
    let query = 3; // S1+2: token 3 of reference prompt 0, token 4 of reference prompt 1
                   // Keys of the evaluated prompts by slot: start, S1, S1+1, S1+2. Reference prompt 1's
                   // `start+1` key (token 1) has no counterpart and takes no part.
    let term = |acts: &Attention, b: usize, q: usize, k: usize, i: usize| {
        acts.pattern[[b, head, q, k]] as f64 * acts.v[[b, k, head, i]] as f64
    };
    for keys in [vec![], vec![1], vec![0, 2], vec![0, 2, 3], vec![0, 1, 2, 3]] {
        let z = edited_z(
            &edge_plan(2, query, keys.clone()),
            &values,
            &clean,
            EdgeAblation::EdgeMean,
        );
        for b in 0..2 {
            for i in 0..z.shape()[3] {
                let expected: f64 = (0..=query)
                    .map(|k| {
                        if keys.contains(&k) {
                            term(&clean, b, query, k, i)
                        } else {
                            let (q0, q1) = SAME_SLOT[query];
                            let (k0, k1) = SAME_SLOT[k];
                            (term(&refs, 0, q0, k0, i) + term(&refs, 1, q1, k1, i)) / 2.0
                        }
                    })
                    .sum();
                let got = z[[b, query, head, i]] as f64;
                assert!(
                    (got - expected).abs() < 1e-6,
                    "keys {keys:?} prompt {b}: {got} vs {expected}"
                );
            }
        }
    }
    // Where every reference occurrence of the query's slot has the same keys (token 0,
    // `start`), keeping no edge is the node-ablated value bit for bit, as under position
    // alignment.
    let none = edited_z(
        &edge_plan(2, 0, vec![]),
        &values,
        &clean,
        EdgeAblation::EdgeMean,
    );
    let mut node = Plan::full(SHAPE, &[T, T], Scope::HeadsAndMlps);
    node.head_keep[0][[0, 0, head]] = false;
    node.head_keep[0][[1, 0, head]] = false;
    assert_eq!(
        none,
        edited_z(&node, &values, &clean, EdgeAblation::EdgeMean)
    );
}

#[test]
fn resample_by_label_reads_the_partner_at_the_same_slot() {
    let refs = attention_of_len(2, 6, 25);
    let clean = attention_of_len(2, T, 26);
    let alignment = uneven_reference();
    let values = label_values(AblationKind::Resample, &alignment, &refs, false).unwrap();
    let empty = Plan::empty(SHAPE, &[T, T], Scope::HeadsAndMlps);
    let z = edited_z(&empty, &values, &clean, EdgeAblation::EdgeMean);
    for (t, (t0, t1)) in SAME_SLOT.iter().copied().enumerate() {
        // Prompt 0 is paired with reference prompt 0, prompt 1 with reference prompt 1.
        assert_eq!(z.slice(s![0, t, .., ..]), refs.z.slice(s![0, t0, .., ..]));
        assert_eq!(z.slice(s![1, t, .., ..]), refs.z.slice(s![1, t1, .., ..]));
    }
}

fn code(err: &ReferenceError) -> String {
    err.code().map(|c| c.to_string()).unwrap_or_default()
}

#[test]
fn a_slot_no_reference_prompt_has_is_an_error_naming_prompt_token_and_slot() {
    // Evaluated prompt 1 has an extra token before S1 (`start+1`); no reference prompt does.
    let alignment = LabelAlignment {
        evaluated: vec![
            PromptSlots::new("prompt 0 (\"a S1 b c d\")", 5, &labels(&[("S1", 1)])),
            PromptSlots::new("prompt 1 (\"a x S1 b c d\")", 6, &labels(&[("S1", 2)])),
        ],
        reference: (0..3)
            .map(|r| PromptSlots::new(format!("reference prompt {r}"), 5, &labels(&[("S1", 1)])))
            .collect(),
    };
    let err = alignment.check(AblationKind::Mean, false).unwrap_err();
    assert_eq!(code(&err), "circuit::ablate::slot_missing_from_reference");
    assert_eq!(
        err.to_string(),
        "prompt 1 (\"a x S1 b c d\"): token 1 is at slot start+1 under `align by label`, but none of the 3 reference prompts has a token at that slot"
    );
    assert!(err.help().unwrap().to_string().contains("same templates"));
    // Zero ablation reads no reference value: nothing to check.
    assert!(alignment.check(AblationKind::Zero, true).is_ok());
}

#[test]
fn under_resample_the_slot_must_be_in_the_partner() {
    // Prompt 1's partner is reference prompt 1, which lacks `start+1`; reference prompt 0 has
    // it, which does not help under resample (but does under mean).
    let alignment = LabelAlignment {
        evaluated: vec![
            PromptSlots::new("prompt 0", 6, &labels(&[("S1", 2)])),
            PromptSlots::new("prompt 1", 6, &labels(&[("S1", 2)])),
        ],
        reference: vec![
            PromptSlots::new("reference prompt 0", 6, &labels(&[("S1", 2)])),
            PromptSlots::new("reference prompt 1", 5, &labels(&[("S1", 1)])),
        ],
    };
    assert!(alignment.check(AblationKind::Mean, false).is_ok());
    let err = alignment.check(AblationKind::Resample, false).unwrap_err();
    assert_eq!(code(&err), "circuit::ablate::slot_missing_from_reference");
    assert_eq!(
        err.to_string(),
        "prompt 1: token 1 is at slot start+1 under `align by label`, but its resample partner, reference prompt 1, has no token at that slot"
    );
    // The builder checks too, before any activation is added.
    let err = LabelReferenceBuilder::new(AblationKind::Resample, needs(false), &alignment)
        .err()
        .unwrap();
    assert_eq!(code(&err), "circuit::ablate::slot_missing_from_reference");
}

#[test]
fn a_query_key_slot_pair_no_reference_prompt_has_is_an_error_when_edges_need_it() {
    // Slots A and B each occur in some reference prompt, never together.
    let alignment = LabelAlignment {
        evaluated: vec![PromptSlots::new(
            "prompt 0",
            4,
            &labels(&[("B", 1), ("A", 2)]),
        )],
        reference: vec![
            PromptSlots::new("reference prompt 0", 3, &labels(&[("A", 1)])),
            PromptSlots::new("reference prompt 1", 3, &labels(&[("B", 1)])),
        ],
    };
    assert!(LabelReferenceBuilder::new(AblationKind::Mean, needs(false), &alignment).is_ok());
    assert!(alignment.check(AblationKind::Mean, false).is_ok());
    let early = alignment.check(AblationKind::Mean, true).unwrap_err();
    assert_eq!(
        code(&early),
        "circuit::ablate::slot_pair_missing_from_reference"
    );
    let err = LabelReferenceBuilder::new(AblationKind::Mean, needs(true), &alignment)
        .err()
        .unwrap();
    assert_eq!(
        code(&err),
        "circuit::ablate::slot_pair_missing_from_reference"
    );
    assert_eq!(
        err.to_string(),
        "prompt 0: query token 2 (slot A) and key token 1 (slot B) never occur together in the 2 reference prompts (key at or before query), so their QK-edge term has no reference value under `align by label`"
    );
}

#[test]
fn equal_layouts_give_the_position_aligned_values_bit_for_bit() {
    // Four reference prompts for four prompts: resample pairs one-to-one.
    let refs = attention_of_len(4, T, 27);
    let clean = attention_of_len(4, T, 28);
    let slots = |name: String| PromptSlots::new(name, T, &labels(&[("S1", 1), ("S2", 3)]));
    let alignment = LabelAlignment {
        evaluated: (0..4).map(|b| slots(format!("prompt {b}"))).collect(),
        reference: (0..4)
            .map(|r| slots(format!("reference prompt {r}")))
            .collect(),
    };
    for kind in [AblationKind::Mean, AblationKind::Resample] {
        let by_label = label_values(kind, &alignment, &refs, true).unwrap();
        let by_position = ReferenceValues::build(
            kind,
            &[layer(&refs)],
            &[T; 4],
            &[T; 4],
            &|b| format!("prompt {b}"),
            &needs(true),
        )
        .unwrap();
        let mut plans = vec![Plan::empty(SHAPE, &[T; 4], Scope::HeadsAndMlps)];
        for keys in [vec![], vec![2], vec![0, 1, 3, 4]] {
            plans.push(edge_plan(4, 4, keys));
        }
        for plan in &plans {
            assert_eq!(
                edited_z(plan, &by_label, &clean, EdgeAblation::EdgeMean),
                edited_z(plan, &by_position, &clean, EdgeAblation::EdgeMean),
                "{kind:?}"
            );
        }
        for prompt in 0..4 {
            for t in 0..T {
                assert_eq!(
                    by_label.mlp_out(0, prompt, t),
                    by_position.mlp_out(0, prompt, t)
                );
                assert_eq!(
                    by_label.head_out(0, prompt, t, 1),
                    by_position.head_out(0, prompt, t, 1)
                );
            }
        }
    }
}
