//! Memory does not grow as prompts × vocabulary (issue 11.12): metrics are computed batch by
//! batch, and past `Evaluator::full_logits_budget` the full model's END logits are recomputed
//! beside each plan instead of kept. The numbers stay the same bits either way.

mod eval_support;

use circuit::measure::{AblationSettings, Evaluation, Evaluator};
use circuit::model::Model;
use circuit::resolve::bound::{AblationKind, EdgeAblation, Scope};
use eval_support::*;

fn run(model: &Model, data: &HandData, budget: usize, batch: usize) -> (Evaluation, usize) {
    let mut c = circuit("c");
    c.heads.insert(h(1, 0), at(&[end(0)]));
    c.qk_edges.push(edge(h(1, 0), label("S1", 0), end(0)));
    let settings = AblationSettings {
        ablation: AblationKind::Mean,
        edge_ablation: EdgeAblation::EdgeMean,
        scope: Scope::HeadsAndMlps,
    };
    let mut evaluator =
        Evaluator::new(model, settings, data.eval_prompts(), data.reference.clone());
    evaluator.full_logits_budget = budget;
    evaluator.batch_size = batch;
    let evaluation = evaluator.evaluate(&[&c]).unwrap();
    (evaluation, evaluator.forward_passes)
}

fn bits(e: &Evaluation) -> Vec<Vec<u64>> {
    [&e.full, &e.empty, &e.circuits[0].1]
        .iter()
        .flat_map(|m| m.values().map(|v| v.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

#[test]
fn full_logits_past_the_budget_are_recomputed_per_batch_with_the_same_bits() {
    let model = Model::load(&gpt2_tiny_dir()).unwrap();
    let data = random_data(300, 8, 7, 5, 3);
    let (kept, kept_passes) = run(&model, &data, usize::MAX, 3);
    let (recomputed, recomputed_passes) = run(&model, &data, 0, 3);
    let (one_batch, _) = run(&model, &data, 0, 64);
    assert_eq!(bits(&kept), bits(&recomputed));
    assert_eq!(bits(&kept), bits(&one_batch));
    // Reference, full, empty, circuit; recomputing adds the full model beside empty and circuit.
    assert_eq!(kept_passes, 4);
    assert_eq!(recomputed_passes, 6);
}
