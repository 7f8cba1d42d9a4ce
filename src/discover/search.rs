//! The search itself, over candidate indices and an exact faithfulness oracle: the MIB curve,
//! the smallest ranked prefix reaching the target (bisection), and the ACDC-style pruning pass.
//! Kept free of the model so that tests can drive it with made-up faithfulness functions.

use std::collections::{BTreeMap, BTreeSet};

/// What an exact evaluation is: the faithfulness of the circuit keeping a set of candidates.
type Oracle<'o, E> = Box<dyn FnMut(&BTreeSet<usize>) -> Result<f64, E> + 'o>;

/// The exact faithfulness of a set of kept candidates, memoized: each distinct set is
/// evaluated once, and [`Evaluations::count`] is the number of exact evaluations made.
pub struct Evaluations<'o, E> {
    oracle: Oracle<'o, E>,
    memo: BTreeMap<BTreeSet<usize>, f64>,
}

impl<'o, E> Evaluations<'o, E> {
    pub fn new(oracle: impl FnMut(&BTreeSet<usize>) -> Result<f64, E> + 'o) -> Self {
        Evaluations {
            oracle: Box::new(oracle),
            memo: BTreeMap::new(),
        }
    }

    pub fn faithfulness(&mut self, kept: &BTreeSet<usize>) -> Result<f64, E> {
        if let Some(&f) = self.memo.get(kept) {
            return Ok(f);
        }
        let f = (self.oracle)(kept)?;
        self.memo.insert(kept.clone(), f);
        Ok(f)
    }

    /// Distinct circuits evaluated so far.
    pub fn count(&self) -> usize {
        self.memo.len()
    }
}

/// The fractions of the candidates at which the MIB benchmark scores a ranking.
pub const CURVE_FRACTIONS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// One point of the faithfulness-against-size curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CurvePoint {
    pub fraction: f64,
    /// Ranked candidates kept: `ceil(fraction × N)`.
    pub k: usize,
    pub faithfulness: f64,
}

/// The curve and its areas.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Curve {
    pub points: Vec<CurvePoint>,
    /// Area under `f` over the fraction axis `[0, 1]` (trapezoids, from `(0, 0)`: the empty
    /// circuit's faithfulness is 0 by definition).
    pub cpr: f64,
    /// Area under `|1 − f|` over the same points.
    pub cmd: f64,
}

/// The candidates kept by the top-`k` prefix: every unranked one (`always`), and the first `k`
/// of `ranked`.
pub fn prefix(always: &[usize], ranked: &[usize], k: usize) -> BTreeSet<usize> {
    always.iter().chain(&ranked[..k]).copied().collect()
}

/// Exact faithfulness at each of [`CURVE_FRACTIONS`] of the ranked candidates.
pub fn curve<E>(
    evals: &mut Evaluations<E>,
    always: &[usize],
    ranked: &[usize],
) -> Result<Curve, E> {
    let n = ranked.len();
    let mut points = Vec::new();
    for fraction in CURVE_FRACTIONS {
        let k = ((fraction * n as f64).ceil() as usize).min(n);
        let faithfulness = evals.faithfulness(&prefix(always, ranked, k))?;
        points.push(CurvePoint {
            fraction,
            k,
            faithfulness,
        });
    }
    let (mut cpr, mut cmd) = (0.0, 0.0);
    let mut previous = (0.0, 0.0);
    for p in &points {
        let (x0, f0) = previous;
        let width = p.fraction - x0;
        cpr += width * (f0 + p.faithfulness) / 2.0;
        cmd += width * ((1.0 - f0).abs() + (1.0 - p.faithfulness).abs()) / 2.0;
        previous = (p.fraction, p.faithfulness);
    }
    Ok(Curve { points, cpr, cmd })
}

/// The result of the prefix search.
#[derive(Clone, Debug, PartialEq)]
pub enum PrefixResult {
    /// The top `k` reach the target with faithfulness `f`.
    Reached { k: usize, faithfulness: f64 },
    /// Even every candidate falls short: `all` is their faithfulness, `best_k` and `best` the
    /// most faithful prefix evaluated.
    Unreachable { all: f64, best_k: usize, best: f64 },
}

/// The smallest prefix (among those bisection visits) whose faithfulness is at least `target`.
/// Invariant: `f(lo) < target <= f(hi)`, starting from the prefixes already on the `curve`
/// (`lo` = 0, the empty circuit, when none falls short), so the answer always reaches the
/// target even where faithfulness is not monotone in `k`.
pub fn smallest_prefix<E>(
    evals: &mut Evaluations<E>,
    always: &[usize],
    ranked: &[usize],
    target: f64,
    curve: &Curve,
) -> Result<PrefixResult, E> {
    let n = ranked.len();
    let all = evals.faithfulness(&prefix(always, ranked, n))?;
    if all < target {
        let (best_k, best) = curve
            .points
            .iter()
            .map(|p| (p.k, p.faithfulness))
            .chain([(n, all)])
            .fold((n, all), |acc, (k, f)| {
                if f > acc.1 || (f == acc.1 && k < acc.0) {
                    (k, f)
                } else {
                    acc
                }
            });
        return Ok(PrefixResult::Unreachable { all, best_k, best });
    }
    let mut hi = curve
        .points
        .iter()
        .filter(|p| p.faithfulness >= target)
        .map(|p| p.k)
        .min()
        .unwrap_or(n)
        .min(n);
    // `k = 0` keeps only the unranked candidates: evaluated, not assumed below the target.
    let mut lo = curve
        .points
        .iter()
        .filter(|p| p.k < hi && p.faithfulness < target)
        .map(|p| p.k)
        .max();
    if lo.is_none() {
        if evals.faithfulness(&prefix(always, ranked, 0))? >= target {
            hi = 0;
        } else {
            lo = Some(0);
        }
    }
    if let Some(mut lo) = lo {
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if evals.faithfulness(&prefix(always, ranked, mid))? >= target {
                hi = mid;
            } else {
                lo = mid;
            }
        }
    }
    let faithfulness = evals.faithfulness(&prefix(always, ranked, hi))?;
    Ok(PrefixResult::Reached {
        k: hi,
        faithfulness,
    })
}

/// ACDC-style pruning: visiting `kept` in `order` (from the output backwards), drop each
/// candidate whose removal keeps faithfulness at least `target`; then visit the survivors
/// again, in the same order, until a pass drops nothing. One pass is not enough: faithfulness
/// is not monotone, so a removal late in a pass (of a component that hurt) can make an earlier
/// survivor free to go. At the fixed point no single survivor can be removed with `f >= target`.
/// Returns the pruned set and its faithfulness.
pub fn prune<E>(
    evals: &mut Evaluations<E>,
    kept: BTreeSet<usize>,
    order: &[usize],
    target: f64,
) -> Result<(BTreeSet<usize>, f64), E> {
    let mut current = kept;
    let mut f = evals.faithfulness(&current)?;
    loop {
        let mut dropped = false;
        for &c in order {
            if !current.contains(&c) {
                continue;
            }
            let mut trial = current.clone();
            trial.remove(&c);
            let g = evals.faithfulness(&trial)?;
            if g >= target {
                current = trial;
                f = g;
                dropped = true;
            }
        }
        // Each pass that drops something shrinks the set, so this ends.
        if !dropped {
            return Ok((current, f));
        }
    }
}

/// Per kept candidate, `f(kept) − f(kept without it)`: its exact cost of removal.
pub fn removal_costs<E>(
    evals: &mut Evaluations<E>,
    kept: &BTreeSet<usize>,
) -> Result<BTreeMap<usize, f64>, E> {
    let f = evals.faithfulness(kept)?;
    let mut costs = BTreeMap::new();
    for &c in kept {
        let mut without = kept.clone();
        without.remove(&c);
        costs.insert(c, f - evals.faithfulness(&without)?);
    }
    Ok(costs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Additive faithfulness: each candidate contributes its weight.
    fn additive(weights: &[f64]) -> impl FnMut(&BTreeSet<usize>) -> Result<f64, ()> + '_ {
        move |kept| Ok(kept.iter().map(|&i| weights[i]).sum())
    }

    #[test]
    fn bisection_finds_the_smallest_prefix_of_a_monotone_curve_and_counts_evaluations() {
        // Ranked 0..20, each worth 0.05: the top 18 reach 0.9.
        let weights = vec![0.05; 20];
        let mut evals = Evaluations::new(additive(&weights));
        let ranked: Vec<usize> = (0..20).collect();
        let curve = curve(&mut evals, &[], &ranked).unwrap();
        assert_eq!(curve.points.last().unwrap().k, 20);
        let result = smallest_prefix(&mut evals, &[], &ranked, 0.9 - 1e-12, &curve).unwrap();
        assert_eq!(
            result,
            PrefixResult::Reached {
                k: 18,
                faithfulness: weights[..18].iter().sum()
            }
        );
        // The curve's distinct prefixes (k = 1, 2, 4, 10, 20) plus a few bisection steps.
        assert!(evals.count() <= 5 + 4, "{}", evals.count());
    }

    #[test]
    fn an_unreachable_target_reports_the_best_prefix() {
        let weights = [0.5, 0.3, -0.2];
        let mut evals = Evaluations::new(additive(&weights));
        let ranked = [0, 1, 2];
        let curve = curve(&mut evals, &[], &ranked).unwrap();
        let result = smallest_prefix(&mut evals, &[], &ranked, 0.9, &curve).unwrap();
        assert_eq!(
            result,
            PrefixResult::Unreachable {
                all: 0.6000000000000001,
                best_k: 2,
                best: 0.8
            }
        );
    }

    #[test]
    fn the_prefix_always_reaches_the_target_even_when_faithfulness_is_not_monotone() {
        // A dip in the middle: bisection may not find the global minimum, but never returns a
        // prefix below the target.
        let weights = [0.6, -0.5, 0.1, 0.5, 0.3];
        let mut evals = Evaluations::new(additive(&weights));
        let ranked = [0, 1, 2, 3, 4];
        let curve = curve(&mut evals, &[], &ranked).unwrap();
        let PrefixResult::Reached { k, faithfulness } =
            smallest_prefix(&mut evals, &[], &ranked, 0.7, &curve).unwrap()
        else {
            panic!("reachable")
        };
        assert!(faithfulness >= 0.7);
        assert_eq!(faithfulness, weights[..k].iter().sum::<f64>());
    }

    #[test]
    fn pruning_drops_what_the_target_does_not_need_and_costs_are_exact_differences() {
        let weights = [0.5, 0.01, 0.45, -0.02, 0.1];
        let mut evals = Evaluations::new(additive(&weights));
        let all: BTreeSet<usize> = (0..5).collect();
        // Backwards order: 4 first.
        let (kept, f) = prune(&mut evals, all, &[4, 3, 2, 1, 0], 0.9).unwrap();
        assert_eq!(kept, BTreeSet::from([0, 2]));
        assert!((f - 0.95).abs() < 1e-12);
        let costs = removal_costs(&mut evals, &kept).unwrap();
        assert!((costs[&0] - 0.5).abs() < 1e-12 && (costs[&2] - 0.45).abs() < 1e-12);
    }

    #[test]
    fn pruning_repeats_its_pass_until_no_survivor_can_go() {
        // Visited 2, 1, 0: removing 2 first drops f to 0.8 (kept); 1 hurts (−0.1), so its
        // removal raises f to 1.05 and makes 2 free to go, which only a second pass sees.
        let weights = [0.9, -0.1, 0.15];
        let mut evals = Evaluations::new(additive(&weights));
        let all: BTreeSet<usize> = (0..3).collect();
        let (kept, f) = prune(&mut evals, all, &[2, 1, 0], 0.9).unwrap();
        assert_eq!(kept, BTreeSet::from([0]));
        assert!((f - 0.9).abs() < 1e-12);
        // No survivor can be removed at the fixed point.
        let costs = removal_costs(&mut evals, &kept).unwrap();
        assert!(costs.values().all(|&cost| f - cost < 0.9));
    }

    #[test]
    fn curve_areas_are_trapezoids_from_the_empty_circuit() {
        // f = 1 everywhere from the first point: CPR is 1 minus the first triangle, CMD that
        // triangle.
        let mut evals = Evaluations::new(|kept: &BTreeSet<usize>| {
            Ok::<f64, ()>(if kept.is_empty() { 0.0 } else { 1.0 })
        });
        let ranked: Vec<usize> = (0..1000).collect();
        let c = curve(&mut evals, &[], &ranked).unwrap();
        assert!((c.cpr - (1.0 - 0.0005)).abs() < 1e-12, "{}", c.cpr);
        assert!((c.cmd - 0.0005).abs() < 1e-12, "{}", c.cmd);
    }
}
