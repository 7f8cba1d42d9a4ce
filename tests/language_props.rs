//! Property tests: generated circuit files survive `circuit fmt` (idempotent, same syntax tree
//! up to spans, every comment kept), and arbitrary or mutated input never panics the parser,
//! the resolver or the formatter.

mod language_support;

use circuit::syntax::comments::scan;
use circuit::syntax::{format_file, parse_str};
use language_support::resolve_in;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "movers", "prev_token", "g1", "_x", "base"])
        .prop_map(String::from)
}

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["S1", "S2", "S4", "IO", "X"]).prop_map(String::from)
}

fn selector() -> impl Strategy<Value = String> {
    prop_oneof![
        (0usize..14).prop_map(|i| i.to_string()),
        (0usize..5, 0usize..14).prop_map(|(a, b)| format!("{a}..{b}")),
        Just("*".to_string()),
    ]
}

fn heads_atom() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (selector(), selector()).prop_map(|(l, h)| format!("{l}.{h}")),
        1 => name(),
    ]
}

fn list<S: Strategy<Value = String>>(s: S, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(s, 1..=max).prop_map(|v| v.join(", "))
}

fn position() -> impl Strategy<Value = String> {
    let anchor = prop_oneof![
        Just("END".to_string()),
        Just("BOS".to_string()),
        label(),
        label().prop_map(|l| format!("first({l})")),
    ];
    (anchor, -3i64..4).prop_map(|(a, o)| match o {
        0 => a,
        o => format!("{a}{o:+}"),
    })
}

fn position_item() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => position(),
        1 => (position(), position()).prop_map(|(a, b)| format!("{a}..{b}")),
    ]
}

fn positions() -> impl Strategy<Value = String> {
    prop_oneof![Just("*".to_string()), list(position_item(), 3)]
}

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["0.8", "1", "1e-3", "0", "2.5E+2"]).prop_map(String::from),
        prop::sample::select(vec![
            "faithfulness",
            "ratio",
            "logit_diff",
            "base.faithfulness",
            "full.logit_diff",
            "empty.prob",
        ])
        .prop_map(String::from),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

fn statement() -> impl Strategy<Value = String> {
    prop_oneof![
        (list(heads_atom(), 3), prop::option::of(positions())).prop_map(|(h, p)| match p {
            Some(p) => format!("{h} @ {p}"),
            None => h,
        }),
        (list(selector(), 3), prop::option::of(positions())).prop_map(|(l, p)| match p {
            Some(p) => format!("mlp {l} @ {p}"),
            None => format!("mlp {l}"),
        }),
        (
            list(heads_atom(), 2),
            list(
                (position_item(), position_item()).prop_map(|(k, q)| format!("{k} -> {q}")),
                3
            )
        )
            .prop_map(|(h, pairs)| format!("edge {h}: {pairs}")),
        (
            list(
                prop_oneof![heads_atom(), selector().prop_map(|s| format!("mlp {s}"))],
                2
            ),
            prop_oneof![
                Just("logits".to_string()),
                selector().prop_map(|s| format!("mlp {s}")),
                (heads_atom(), prop::sample::select(vec!["q", "k", "v"]))
                    .prop_map(|(h, i)| format!("{h}.{i}")),
            ],
            prop::option::of(positions()),
        )
            .prop_map(|(f, t, p)| match p {
                Some(p) => format!("edge {f} -> {t} @ {p}"),
                None => format!("edge {f} -> {t}"),
            }),
        list(heads_atom(), 2).prop_map(|h| format!("drop {h}")),
        (
            expr(),
            prop::sample::select(vec!["<", "<=", ">", ">="]),
            expr()
        )
            .prop_map(|(a, c, b)| format!("expect {a} {c} {b}")),
    ]
}

fn setting() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("model \"../configs/gpt2-small\"".to_string()),
        (
            name(),
            prop::collection::vec(
                (
                    name(),
                    prop::sample::select(vec!["64", "-0.5", "\"bare\"", "true"])
                ),
                0..3
            )
        )
            .prop_map(|(n, ps)| {
                let ps: Vec<String> = ps.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                if ps.is_empty() {
                    format!("dataset {n} = seqcont.numerals")
                } else {
                    format!("dataset {n} = seqcont.numerals({})", ps.join(", "))
                }
            }),
        name().prop_map(|n| format!("reference {n}.corrupt")),
        prop::sample::select(vec![
            "ablate heads by mean",
            "ablate heads and mlps by zero",
            "ablate edges by knockout",
            "metric kl",
            "align by label",
        ])
        .prop_map(String::from),
        (name(), list(heads_atom(), 3)).prop_map(|(n, h)| format!("heads {n} = {h}")),
    ]
}

/// A statement with optional comments, random spacing and blank lines.
fn decorated(
    line: impl Strategy<Value = String>,
    indent: &'static str,
) -> impl Strategy<Value = String> {
    (
        line,
        prop::option::of("[a-z ]{0,8}"),
        prop::option::of("[a-z ]{0,8}"),
        any::<bool>(),
        prop::sample::select(vec![" ", "  ", "\t", "\n    "]),
    )
        .prop_map(move |(text, leading, trailing, blank, space)| {
            let mut out = String::new();
            if blank {
                out.push('\n');
            }
            if let Some(c) = leading {
                out.push_str(&format!("{indent}# {c}\n"));
            }
            // Respace the statement (no statement holds a space inside a string here except
            // parameter values, which have none).
            out.push_str(indent);
            out.push_str(&text.replace(' ', space));
            if let Some(c) = trailing {
                out.push_str(&format!("   #{c}"));
            }
            out.push('\n');
            out
        })
}

fn circuit_block() -> impl Strategy<Value = String> {
    (
        name(),
        prop::option::of(name()),
        prop::collection::vec(decorated(statement(), "  "), 0..6),
        prop::option::of("[a-z]{1,5}"),
    )
        .prop_map(|(n, base, body, open)| {
            let mut out = format!("circuit {n}");
            if let Some(b) = base {
                out.push_str(&format!(" extends {b}"));
            }
            out.push_str(" {");
            if let Some(c) = open {
                out.push_str(&format!(" # {c}"));
            }
            out.push('\n');
            for s in body {
                out.push_str(&s);
            }
            out.push_str("}\n");
            out
        })
}

fn file_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![2 => decorated(setting(), ""), 1 => circuit_block()],
            0..8,
        ),
        prop::option::of("[a-z ]{0,10}"),
    )
        .prop_map(|(items, end)| {
            let mut out = items.concat();
            if let Some(c) = end {
                out.push_str(&format!("# {c}\n"));
            }
            out
        })
}

fn comment_texts(text: &str) -> Vec<String> {
    let mut v: Vec<String> = scan(text).into_iter().map(|c| c.text).collect();
    v.sort();
    v
}

/// The formatter's contract on one valid text.
fn check_round_trip(text: &str) {
    let first = parse_str("t.circuit", text).expect("valid text parses");
    language_support::check_spans(&first, text);
    let formatted = format_file(&first);
    let second = parse_str("t.circuit", &formatted).unwrap_or_else(|d| {
        panic!(
            "formatted text does not parse:\n{formatted}\n{}",
            d.render_plain(100)
        )
    });
    assert_eq!(
        first.without_spans(),
        second.without_spans(),
        "formatting changed the tree\n--- input\n{text}\n--- formatted\n{formatted}"
    );
    assert_eq!(
        format_file(&second),
        formatted,
        "not idempotent\n{formatted}"
    );
    assert_eq!(
        comment_texts(text),
        comment_texts(&formatted),
        "comments lost\n{formatted}"
    );
}

proptest! {
    // 300 cases by default (fast in CI); PROPTEST_CASES=N for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        .. ProptestConfig::default()
    })]

    #[test]
    fn generated_files_survive_formatting(text in file_text()) {
        check_round_trip(&text);
    }

    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,300}") {
        exercise(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(vec![
        "circuit", "c", "{", "}", "9.1", "@", "END", "S1", "+1", "-", "..", ",", "edge", ":", "->",
        "mlp", "3", "drop", "expect", "faithfulness", ">=", "0.8", "(", ")", "*", "#x\n", "\n",
        "heads", "=", "model", "\"m\"", "dataset", "ioi", "extends", "first(S1)", "logits", ".q",
    ]), 0..60)) {
        exercise(&tokens.join(" "));
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0usize..FIXTURES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..6, prop::sample::select(vec![
            "", " ", "\n", "#", "{", "}", "@", "..", "-", "(", "9.1", "S9", "\"", "é", "12.0",
        ])), 1..5),
    ) {
        let mut text = FIXTURES[which].to_string();
        for (at, len, insert) in edits {
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) { start -= 1; }
            let mut end = (start + len).min(text.len());
            while !text.is_char_boundary(end) { end += 1; }
            text.replace_range(start..end, insert);
        }
        exercise(&text);
    }
}

const FIXTURES: [&str; 3] = [
    include_str!("fixtures/ok/all_constructs.circuit"),
    include_str!("fixtures/ok/comments.circuit"),
    include_str!("fixtures/ok/ioi.circuit"),
];

/// Parse, resolve and format; when the text parses, the formatter's contract must hold too.
fn exercise(text: &str) {
    if parse_str("t.circuit", text).is_ok() {
        check_round_trip(text);
    }
    let _ = resolve_in("tests/fixtures/ok", "t.circuit", text);
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!(
        "circuit c {{ expect {}1{} > 0 }}",
        "(".repeat(10_000),
        ")".repeat(10_000)
    );
    let err = parse_str("t.circuit", &deep).unwrap_err();
    assert_eq!(err.items[0].code, "circuit::parse::too_complex");
    let long = format!("circuit c {{ expect {}1 > 0 }}", "-".repeat(10_000));
    let err = parse_str("t.circuit", &long).unwrap_err();
    assert_eq!(err.items[0].code, "circuit::parse::too_complex");
    let wide = format!("circuit c {{ expect 1{} > 0 }}", " + 1".repeat(10_000));
    assert!(parse_str("t.circuit", &wide).is_err());
}

#[test]
fn tricky_comment_placements_round_trip() {
    let cases = [
        "circuit c # between name and brace\n{\n  9.1 @ END\n}\n",
        "circuit c extends # inside the header\n  b {\n}\ncircuit b {}\n",
        "circuit c { 9.1 @ END } # after a one-line circuit\n",
        "circuit c {\n  9.1 @ # inside a statement\n    END, # and again\n    S1\n}\n",
        "heads g = 1.1 heads h = 2.2 # two statements on one line\n",
        "# only comments\n\n\n# after blank lines\n",
        "model \"m#not a comment\"  # a comment\n",
        "circuit c {\n\n\n  # a comment after blank lines at the start of a body\n  9.1\n}\n",
        "circuit c {}\n# end\n\n\n",
        "circuit c {\n  9.1 @ END\n\n\n  # before the brace, after blank lines\n}\n",
        "metric kl\r\n# windows line endings\r\ncircuit c {\r\n  9.1 @ END  # x\r\n}\r\n",
    ];
    for case in cases {
        check_round_trip(case);
    }
}
