//! Expectations: `expect LHS OP RHS` bound to quantities, and a check that it can hold.

use super::binder::Binder;
use super::bound::*;
use super::diagnostics as code;
use super::settings::bind_metric;
use super::value::Interval;
use crate::syntax::ast::{self, Span};
use crate::syntax::format;
use crate::syntax::SourceDiagnostic;
use crate::util::did_you_mean;

/// Names an expectation may use for the current circuit's (or a named circuit's) results.
const QUANTITY_NAMES: [&str; 7] = [
    "faithfulness",
    "ratio",
    "logit_diff",
    "prob",
    "logprob",
    "kl",
    "accuracy",
];

impl<'a> Binder<'a> {
    pub(super) fn expectation(
        &mut self,
        lhs: &ast::Expr,
        comparison: ast::CmpOp,
        rhs: &ast::Expr,
        span: Span,
    ) -> Option<Expectation> {
        let errors_before = self.diags.error_count();
        let l = self.value(lhs);
        let r = self.value(rhs);
        if self.diags.error_count() > errors_before {
            return None;
        }
        let comparison = match comparison {
            ast::CmpOp::Lt => Comparison::Lt,
            ast::CmpOp::Le => Comparison::Le,
            ast::CmpOp::Gt => Comparison::Gt,
            ast::CmpOp::Ge => Comparison::Ge,
        };
        let Interval { lo: llo, hi: lhi } = l.range();
        let Interval { lo: rlo, hi: rhi } = r.range();
        let never = match comparison {
            Comparison::Gt => lhi <= rlo,
            Comparison::Ge => lhi < rlo,
            Comparison::Lt => llo >= rhi,
            Comparison::Le => llo > rhi,
        };
        if never {
            let (lhs_bound, rhs_bound) = match comparison {
                Comparison::Gt | Comparison::Ge => (
                    format!("at most {}", show(lhi)),
                    format!("at least {}", show(rlo)),
                ),
                Comparison::Lt | Comparison::Le => (
                    format!("at least {}", show(llo)),
                    format!("at most {}", show(rhi)),
                ),
            };
            self.error(
                SourceDiagnostic::warning(
                    code::IMPOSSIBLE_EXPECTATION,
                    "this expectation can never hold",
                )
                .with_label(lhs.span(), format!("this is {lhs_bound}"))
                .with_label(rhs.span(), format!("this is {rhs_bound}"))
                .with_help("prob and accuracy lie in [0, 1], logprob ≤ 0, kl ≥ 0; check the comparison and the bound"),
            );
        }
        Some(Expectation {
            lhs: l,
            comparison,
            rhs: r,
            text: format::expectation_text(
                lhs,
                match comparison {
                    Comparison::Lt => ast::CmpOp::Lt,
                    Comparison::Le => ast::CmpOp::Le,
                    Comparison::Gt => ast::CmpOp::Gt,
                    Comparison::Ge => ast::CmpOp::Ge,
                },
                rhs,
            ),
            span,
        })
    }

    fn value(&mut self, e: &ast::Expr) -> ValueExpr {
        match e {
            ast::Expr::Number { value, .. } => ValueExpr::Number(*value),
            ast::Expr::Neg { operand, .. } => ValueExpr::Neg(Box::new(self.value(operand))),
            ast::Expr::Binary { op, lhs, rhs, .. } => {
                let l = Box::new(self.value(lhs));
                let r = Box::new(self.value(rhs));
                match op {
                    ast::BinOp::Add => ValueExpr::Add(l, r),
                    ast::BinOp::Sub => ValueExpr::Sub(l, r),
                    ast::BinOp::Mul => ValueExpr::Mul(l, r),
                }
            }
            ast::Expr::Quantity {
                qualifier, name, ..
            } => self.quantity(qualifier.as_ref(), name),
        }
    }

    fn quantity(&mut self, qualifier: Option<&ast::Ident>, name: &ast::Ident) -> ValueExpr {
        let placeholder = ValueExpr::Number(0.0);
        let metric = ast::MetricName::from_keyword(&name.name).map(bind_metric);
        let unknown_quantity = |allowed: &[&str]| {
            let mut d = SourceDiagnostic::error(
                code::UNKNOWN_QUANTITY,
                format!("unknown quantity `{}`", name.name),
            )
            .with_label(name.span.clone(), "not a quantity");
            let list = allowed
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", ");
            d = match did_you_mean(&name.name, allowed.iter().copied()) {
                Some(s) => d.with_help(format!("did you mean `{s}`? quantities here are {list}")),
                None => d.with_help(format!("quantities here are {list}")),
            };
            d
        };
        match qualifier.map(|q| q.name.as_str()) {
            Some(which @ ("full" | "empty")) => match metric {
                Some(m) => ValueExpr::Quantity {
                    circuit: None,
                    quantity: if which == "full" {
                        Quantity::Full(m)
                    } else {
                        Quantity::Empty(m)
                    },
                },
                None => {
                    self.error(unknown_quantity(&QUANTITY_NAMES[2..]));
                    placeholder
                }
            },
            Some(circuit) => {
                let q = qualifier.expect("matched Some");
                if !self.circuit_names.contains_key(circuit) {
                    let names: Vec<String> = self.circuit_names.keys().cloned().collect();
                    let mut d = SourceDiagnostic::error(
                        code::UNKNOWN_CIRCUIT,
                        format!("no circuit named `{circuit}`"),
                    )
                    .with_label(q.span.clone(), "not defined in this file");
                    d = match did_you_mean(circuit, names.iter().map(|s| s.as_str())) {
                        Some(s) => d.with_help(format!("did you mean `{s}`?")),
                        None => d.with_help("`full.METRIC` and `empty.METRIC` name the full model and the empty circuit"),
                    };
                    self.error(d);
                    return placeholder;
                }
                match own_quantity(&name.name, metric) {
                    Some(quantity) => ValueExpr::Quantity {
                        circuit: Some(circuit.to_string()),
                        quantity,
                    },
                    None => {
                        self.error(unknown_quantity(&QUANTITY_NAMES));
                        placeholder
                    }
                }
            }
            None => match own_quantity(&name.name, metric) {
                Some(quantity) => ValueExpr::Quantity {
                    circuit: None,
                    quantity,
                },
                None => {
                    self.error(unknown_quantity(&QUANTITY_NAMES));
                    placeholder
                }
            },
        }
    }
}

fn own_quantity(name: &str, metric: Option<Metric>) -> Option<Quantity> {
    match (name, metric) {
        ("faithfulness", _) => Some(Quantity::Faithfulness),
        ("ratio", _) => Some(Quantity::Ratio),
        (_, Some(m)) => Some(Quantity::Metric(m)),
        _ => None,
    }
}

fn show(x: f64) -> String {
    if x.is_infinite() {
        if x > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        }
    } else {
        format!("{x}")
    }
}
