//! The one evaluator of an expectation's arithmetic ([`ValueExpr`]): a fold over the tree in
//! any [`Arith`] domain. `circuit test` folds it over measured numbers (`f64`,
//! `measure::expect`); resolve folds it over ranges ([`Interval`], [`ValueExpr::range`]) to
//! warn about expectations that can never hold; [`ValueExpr::circuits`] folds it over nothing
//! to list the circuits an expression reads.

use std::collections::BTreeSet;

use super::bound::{Metric, Quantity, ValueExpr};

/// What an expression can be evaluated to: numbers, ranges, or nothing at all.
pub trait Arith: Sized {
    fn number(x: f64) -> Self;
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    fn neg(self) -> Self;
}

impl Arith for f64 {
    fn number(x: f64) -> f64 {
        x
    }
    fn add(self, other: f64) -> f64 {
        self + other
    }
    fn sub(self, other: f64) -> f64 {
        self - other
    }
    fn mul(self, other: f64) -> f64 {
        self * other
    }
    fn neg(self) -> f64 {
        -self
    }
}

/// The empty domain: folding into it only visits the quantities.
impl Arith for () {
    fn number(_: f64) {}
    fn add(self, _: ()) {}
    fn sub(self, _: ()) {}
    fn mul(self, _: ()) {}
    fn neg(self) {}
}

/// A closed range `[lo, hi]` (interval arithmetic). A bound that comes out NaN (∞ − ∞, 0 · ∞)
/// widens the range to everything, so the arithmetic finds only sure impossibilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    pub const ANY: Interval = Interval {
        lo: f64::NEG_INFINITY,
        hi: f64::INFINITY,
    };

    fn new(lo: f64, hi: f64) -> Interval {
        if lo.is_nan() || hi.is_nan() {
            Interval::ANY
        } else {
            Interval { lo, hi }
        }
    }

    /// The range a quantity can take (quantities are treated as independent).
    pub fn of_quantity(quantity: Quantity) -> Interval {
        let metric_range = |m: Metric| match m {
            Metric::LogitDiff => Interval::ANY,
            Metric::Prob | Metric::Accuracy => Interval::new(0.0, 1.0),
            Metric::Logprob => Interval::new(f64::NEG_INFINITY, 0.0),
            Metric::Kl => Interval::new(0.0, f64::INFINITY),
        };
        match quantity {
            Quantity::Faithfulness | Quantity::Ratio => Interval::ANY,
            Quantity::Metric(m) | Quantity::Full(m) | Quantity::Empty(m) => metric_range(m),
        }
    }
}

impl Arith for Interval {
    fn number(x: f64) -> Interval {
        Interval::new(x, x)
    }
    fn add(self, o: Interval) -> Interval {
        Interval::new(self.lo + o.lo, self.hi + o.hi)
    }
    fn sub(self, o: Interval) -> Interval {
        Interval::new(self.lo - o.hi, self.hi - o.lo)
    }
    fn mul(self, o: Interval) -> Interval {
        let products = [
            self.lo * o.lo,
            self.lo * o.hi,
            self.hi * o.lo,
            self.hi * o.hi,
        ];
        if products.iter().any(|p| p.is_nan()) {
            return Interval::ANY;
        }
        Interval::new(
            products.iter().copied().fold(f64::INFINITY, f64::min),
            products.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        )
    }
    fn neg(self) -> Interval {
        Interval::new(-self.hi, -self.lo)
    }
}

/// A quantity's value in a fold: its circuit (`None`: the expectation's own) and quantity.
pub type Leaf<'a, V, E> = dyn FnMut(Option<&str>, Quantity) -> Result<V, E> + 'a;

impl ValueExpr {
    /// Evaluates the expression in domain `V`, `leaf` giving each quantity's value (its circuit
    /// is `None` for the expectation's own circuit). The first error a leaf returns is the
    /// result, left operand first.
    pub fn fold<V: Arith, E>(&self, leaf: &mut Leaf<V, E>) -> Result<V, E> {
        Ok(match self {
            ValueExpr::Number(x) => V::number(*x),
            ValueExpr::Quantity { circuit, quantity } => leaf(circuit.as_deref(), *quantity)?,
            ValueExpr::Add(a, b) => a.fold(leaf)?.add(b.fold(leaf)?),
            ValueExpr::Sub(a, b) => a.fold(leaf)?.sub(b.fold(leaf)?),
            ValueExpr::Mul(a, b) => a.fold(leaf)?.mul(b.fold(leaf)?),
            ValueExpr::Neg(a) => a.fold(leaf)?.neg(),
        })
    }

    /// The range the expression can take, from the ranges of the quantities in it.
    pub fn range(&self) -> Interval {
        let result: Result<Interval, std::convert::Infallible> =
            self.fold(&mut |_, quantity| Ok(Interval::of_quantity(quantity)));
        match result {
            Ok(range) => range,
        }
    }

    /// The circuits the expression names (other than its own).
    pub fn circuits(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let _: Result<(), std::convert::Infallible> = self.fold(&mut |circuit, _| {
            if let Some(c) = circuit {
                out.insert(c.to_string());
            }
            Ok(())
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(quantity: Quantity) -> Box<ValueExpr> {
        Box::new(ValueExpr::Quantity {
            circuit: None,
            quantity,
        })
    }

    fn n(x: f64) -> Box<ValueExpr> {
        Box::new(ValueExpr::Number(x))
    }

    #[test]
    fn ranges_follow_interval_arithmetic() {
        let prob = Quantity::Metric(Metric::Prob);
        let kl = Quantity::Metric(Metric::Kl);
        // prob − 2 lies in [−2, −1]; −kl in [−∞, 0]; 2 · prob in [0, 2].
        assert_eq!(
            ValueExpr::Sub(q(prob), n(2.0)).range(),
            Interval { lo: -2.0, hi: -1.0 }
        );
        assert_eq!(
            ValueExpr::Neg(q(kl)).range(),
            Interval {
                lo: f64::NEG_INFINITY,
                hi: 0.0
            }
        );
        assert_eq!(
            ValueExpr::Mul(n(2.0), q(prob)).range(),
            Interval { lo: 0.0, hi: 2.0 }
        );
        // 0 · ∞ is NaN: the range widens to everything rather than claiming a bound.
        assert_eq!(ValueExpr::Mul(n(0.0), q(kl)).range(), Interval::ANY);
        // kl − kl: ∞ − ∞ in the bounds, again everything.
        assert_eq!(ValueExpr::Sub(q(kl), q(kl)).range(), Interval::ANY);
    }

    #[test]
    fn numbers_fold_in_tree_order_and_errors_stop_the_fold() {
        let expr = ValueExpr::Sub(
            n(1.0),
            Box::new(ValueExpr::Mul(n(3.0), q(Quantity::Faithfulness))),
        );
        let value: Result<f64, ()> = expr.fold(&mut |_, _| Ok(0.5));
        assert_eq!(value, Ok(-0.5));
        let undefined: Result<f64, &str> = expr.fold(&mut |_, _| Err("undefined"));
        assert_eq!(undefined, Err("undefined"));
    }
}
