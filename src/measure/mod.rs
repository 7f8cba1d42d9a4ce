//! Metrics at END and faithfulness.
//!
//! Every metric is computed per prompt from the next-token logits at END, in f64. Faithfulness
//! averages the metric over prompts *first* and normalizes afterwards:
//! `F = (m̄(C) − m̄(empty)) / (m̄(full) − m̄(empty))`, where `m̄` is the prompt mean. The
//! per-prompt normalized scores (normalize first, then look at the distribution) are reported
//! as quantiles beside it, because the two orders give different numbers.

pub mod disk_cache;
pub mod error;
pub mod evaluate;
pub mod expect;
pub mod file;
pub mod predict;
pub mod session;

use std::collections::BTreeMap;

use ndarray::ArrayView2;

use crate::resolve::bound::{Metric, SettingName};

pub use evaluate::{
    AblationSettings, EvalPrompts, Evaluation, Evaluator, ModelHandle, PromptMetrics,
};
pub use session::{Session, SessionOptions};

/// Every metric, in report order.
pub const ALL_METRICS: [Metric; 5] = [
    Metric::LogitDiff,
    Metric::Prob,
    Metric::Logprob,
    Metric::Kl,
    Metric::Accuracy,
];

/// How reports and JSON name a metric.
pub fn metric_name(metric: Metric) -> &'static str {
    metric.name()
}

/// The two tokens a prompt is scored on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets {
    pub answer: u32,
    pub distractor: u32,
}

impl Targets {
    /// The prompt's answer and distractor tokens (the one place they are read from a prompt);
    /// an error on a prompt without them (a reference prompt).
    pub fn of(prompt: &crate::data::TokenizedPrompt) -> Result<Targets, crate::data::DataError> {
        let (answer, distractor) = prompt.targets()?;
        Ok(Targets { answer, distractor })
    }
}

/// `log softmax` of one logits row, in f64.
fn log_softmax(row: ndarray::ArrayView1<f32>) -> Vec<f64> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&x| x as f64 - log_z).collect()
}

/// Per-prompt values of every metric for one run, given its END logits `(B, V)` and the full
/// model's END logits `(B, V)` (for `kl`).
pub fn per_prompt_metrics(
    logits: ArrayView2<f32>,
    full_logits: ArrayView2<f32>,
    targets: &[Targets],
) -> BTreeMap<Metric, Vec<f64>> {
    let mut out: BTreeMap<Metric, Vec<f64>> = ALL_METRICS
        .iter()
        .map(|&m| (m, Vec::with_capacity(targets.len())))
        .collect();
    for (b, target) in targets.iter().enumerate() {
        let row = logits.row(b);
        let logp = log_softmax(row);
        let full_logp = log_softmax(full_logits.row(b));
        let answer = target.answer as usize;
        let distractor = target.distractor as usize;
        let logit_diff = row[answer] as f64 - row[distractor] as f64;
        // KL(full ‖ circuit) = Σ_v p_full(v) (log p_full(v) − log p_circuit(v)), natural log.
        let kl: f64 = full_logp
            .iter()
            .zip(&logp)
            .map(|(&lf, &lc)| {
                if lf == f64::NEG_INFINITY {
                    0.0
                } else {
                    lf.exp() * (lf - lc)
                }
            })
            .sum();
        // Top-1 with ties going to the lowest id, as argmax does everywhere else.
        let top = row
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                if x > bv {
                    (i, x)
                } else {
                    (bi, bv)
                }
            })
            .0;
        out.get_mut(&Metric::LogitDiff).unwrap().push(logit_diff);
        out.get_mut(&Metric::Prob).unwrap().push(logp[answer].exp());
        out.get_mut(&Metric::Logprob).unwrap().push(logp[answer]);
        out.get_mut(&Metric::Kl).unwrap().push(kl.max(0.0));
        out.get_mut(&Metric::Accuracy)
            .unwrap()
            .push(if top == answer { 1.0 } else { 0.0 });
    }
    out
}

/// Per-prompt values of one metric, the same bits [`per_prompt_metrics`] gives for it; cheaper
/// for `logit_diff`, which reads two logits and needs no softmax over the vocabulary (an
/// exact scan computes only the file's metric of each of its thousands of runs).
pub fn per_prompt_metric(
    metric: Metric,
    logits: ArrayView2<f32>,
    full_logits: ArrayView2<f32>,
    targets: &[Targets],
) -> Vec<f64> {
    match metric {
        Metric::LogitDiff => targets
            .iter()
            .enumerate()
            .map(|(b, t)| {
                logits[[b, t.answer as usize]] as f64 - logits[[b, t.distractor as usize]] as f64
            })
            .collect(),
        _ => per_prompt_metrics(logits, full_logits, targets)
            .remove(&metric)
            .expect("every metric"),
    }
}

/// The mean over prompts, summed in prompt order (deterministic).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Five-number summary of per-prompt normalized scores.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Quantiles {
    pub min: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub max: f64,
    /// Prompts whose score is defined (full and empty differ on them).
    pub n_prompts: usize,
}

/// Quantiles with linear interpolation between order statistics (numpy's default).
pub fn quantiles(values: &[f64]) -> Option<Quantiles> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| {
        let pos = p * (sorted.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
    };
    Some(Quantiles {
        min: sorted[0],
        q25: at(0.25),
        median: at(0.5),
        q75: at(0.75),
        max: sorted[sorted.len() - 1],
        n_prompts: sorted.len(),
    })
}

/// A metric's prompt means for the full model, the circuit and the empty circuit, and what
/// follows from them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Scores {
    pub full: f64,
    pub circuit: f64,
    pub empty: f64,
    /// `(m̄(C) − m̄(empty)) / (m̄(full) − m̄(empty))`; `None` when full and empty agree.
    pub faithfulness: Option<f64>,
    /// `m̄(C) / m̄(full)`; `None` when `m̄(full)` is 0 (always so for `kl`).
    pub ratio: Option<f64>,
    /// Quantiles of the per-prompt `(m(C) − m(empty)) / (m(full) − m(empty))`, over the
    /// prompts where full and empty differ.
    pub per_prompt_faithfulness: Option<Quantiles>,
    /// Set when faithfulness divides by a gap that is within noise of zero (see
    /// [`ill_conditioned`]); absent from the JSON otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ill_conditioned: Option<IllConditioned>,
}

/// Standard errors the full-vs-empty gap must exceed for faithfulness to be trusted.
pub const ILL_CONDITIONED_STANDARD_ERRORS: f64 = 2.0;

/// Why a faithfulness is ill-conditioned: its denominator `m̄(full) − m̄(empty)` is smaller than
/// [`ILL_CONDITIONED_STANDARD_ERRORS`] standard errors of the per-prompt gaps
/// `m(full) − m(empty)`, so which side of zero it falls on is noise and the ratio can take any
/// value (docs/semantics.md, "Ill-conditioned faithfulness").
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IllConditioned {
    /// `m̄(full) − m̄(empty)`.
    pub gap: f64,
    /// Sample standard deviation of the per-prompt gaps over √n.
    pub gap_standard_error: f64,
}

/// The warning for a gap within noise of zero; `None` when it is clear of it, when full and
/// empty agree exactly (faithfulness is then undefined, not ill-conditioned), or with fewer than
/// two prompts (no spread to compare with).
pub fn ill_conditioned(full: &[f64], empty: &[f64]) -> Option<IllConditioned> {
    let gaps: Vec<f64> = full.iter().zip(empty).map(|(f, e)| f - e).collect();
    let n = gaps.len();
    let gap = mean(&gaps);
    if n < 2 || gap == 0.0 || !gap.is_finite() {
        return None;
    }
    let variance = gaps.iter().map(|g| (g - gap).powi(2)).sum::<f64>() / (n - 1) as f64;
    let gap_standard_error = (variance / n as f64).sqrt();
    (gap.abs() < ILL_CONDITIONED_STANDARD_ERRORS * gap_standard_error).then_some(IllConditioned {
        gap,
        gap_standard_error,
    })
}

/// Normalizes per-prompt metric values of the three runs.
pub fn scores(full: &[f64], circuit: &[f64], empty: &[f64]) -> Scores {
    let (f, c, e) = (mean(full), mean(circuit), mean(empty));
    let faithfulness = if f != e {
        Some((c - e) / (f - e))
    } else {
        None
    };
    let ratio = if f != 0.0 { Some(c / f) } else { None };
    let per_prompt: Vec<f64> = full
        .iter()
        .zip(circuit)
        .zip(empty)
        .filter(|((f, _), e)| f != e)
        .map(|((f, c), e)| (c - e) / (f - e))
        .collect();
    Scores {
        full: f,
        circuit: c,
        empty: e,
        faithfulness,
        ratio,
        per_prompt_faithfulness: quantiles(&per_prompt),
        ill_conditioned: faithfulness.and_then(|_| ill_conditioned(full, empty)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn metrics_of_a_hand_computed_row() {
        // Logits for a 3-token vocabulary; answer 0, distractor 2.
        let logits = array![[2.0f32, 1.0, 0.0]];
        let full = array![[0.0f32, 0.0, 0.0]];
        let targets = [Targets {
            answer: 0,
            distractor: 2,
        }];
        let m = per_prompt_metrics(logits.view(), full.view(), &targets);
        let z: f64 = (2f64).exp() + 1f64.exp() + 1.0;
        assert!((m[&Metric::LogitDiff][0] - 2.0).abs() < 1e-12);
        assert!((m[&Metric::Prob][0] - 2f64.exp() / z).abs() < 1e-12);
        assert!((m[&Metric::Logprob][0] - (2.0 - z.ln())).abs() < 1e-12);
        assert_eq!(m[&Metric::Accuracy][0], 1.0);
        // KL(uniform ‖ p) = Σ 1/3 (ln 1/3 − ln p_i).
        let kl: f64 = [2.0, 1.0, 0.0]
            .iter()
            .map(|&x: &f64| (1.0f64 / 3.0) * ((1.0f64 / 3.0).ln() - (x - z.ln())))
            .sum();
        assert!((m[&Metric::Kl][0] - kl).abs() < 1e-12);
        // KL of a distribution against itself is 0.
        let same = per_prompt_metrics(full.view(), full.view(), &targets);
        assert!(same[&Metric::Kl][0].abs() < 1e-15);
    }

    #[test]
    fn one_metric_is_the_bits_of_all_metrics() {
        let logits = ndarray::Array2::from_shape_fn((3, 7), |(b, v)| {
            ((b * 7 + v) as f32 * 0.37).sin() * 4.0
        });
        let full = logits.mapv(|x| x * 0.5 + 0.1);
        let targets =
            [(1, 2), (6, 0), (3, 3)].map(|(answer, distractor)| Targets { answer, distractor });
        let all = per_prompt_metrics(logits.view(), full.view(), &targets);
        for metric in ALL_METRICS {
            let one = per_prompt_metric(metric, logits.view(), full.view(), &targets);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&all[&metric]), "{metric:?}");
        }
    }

    #[test]
    fn faithfulness_averages_first() {
        let full = [2.0, 4.0];
        let empty = [0.0, 0.0];
        let circuit = [2.0, 1.0];
        let s = scores(&full, &circuit, &empty);
        // Mean first: (1.5 − 0) / (3 − 0) = 0.5; per prompt: 1.0 and 0.25.
        assert_eq!(s.faithfulness, Some(0.5));
        assert_eq!(s.ratio, Some(0.5));
        let q = s.per_prompt_faithfulness.unwrap();
        assert_eq!((q.min, q.median, q.max), (0.25, 0.625, 1.0));
        assert_eq!(scores(&[1.0], &[1.0], &[1.0]).faithfulness, None);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let q = quantiles(&[4.0, 1.0, 3.0, 2.0, 5.0]).unwrap();
        assert_eq!(
            (q.min, q.q25, q.median, q.q75, q.max),
            (1.0, 2.0, 3.0, 4.0, 5.0)
        );
        let q = quantiles(&[0.0, 1.0]).unwrap();
        assert_eq!(q.q25, 0.25);
        assert!(quantiles(&[]).is_none());
    }

    /// The gap faithfulness divides by is compared with its standard error: gaps of
    /// 0.3, −0.1, 0.2, −0.2 have mean 0.05 and standard error 0.1155 (sd 0.2309 over √4), so
    /// the gap is within 2 standard errors of zero; gaps of 1.0, 1.2, 0.8, 1.0 are not.
    #[test]
    fn a_gap_within_two_standard_errors_of_zero_is_ill_conditioned() {
        let empty = [0.0; 4];
        let noisy = ill_conditioned(&[0.3, -0.1, 0.2, -0.2], &empty).unwrap();
        assert!((noisy.gap - 0.05).abs() < 1e-12);
        let sd = ((0.25f64.powi(2) * 2.0 + 0.15f64.powi(2) * 2.0) / 3.0).sqrt();
        assert!((noisy.gap_standard_error - sd / 2.0).abs() < 1e-12);
        assert!(ill_conditioned(&[1.0, 1.2, 0.8, 1.0], &empty).is_none());
        // One prompt has no spread to judge by; an exact tie is undefined, not ill-conditioned.
        assert!(ill_conditioned(&[0.01], &[0.0]).is_none());
        assert!(ill_conditioned(&[0.5, -0.5], &[0.0, 0.0]).is_none());
        let s = scores(&[0.3, -0.1, 0.2, -0.2], &[0.1, 0.0, 0.1, 0.0], &empty);
        assert!(s.faithfulness.is_some() && s.ill_conditioned.is_some());
        assert!(scores(&[1.0, 1.2, 0.8, 1.0], &[0.5; 4], &empty)
            .ill_conditioned
            .is_none());
    }
}
