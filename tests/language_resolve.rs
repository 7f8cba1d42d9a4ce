//! What the resolver produces: settings and their defaults, groups, `extends` with overrides
//! and drops, edges, expectations, and that every error of a file is reported.

mod language_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::data::{DatasetSource, ParamValue};
use circuit::model::{HeadInput, ModelSource};
use circuit::resolve::bound::*;
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};
use language_support::{resolve_err, resolve_ok};

fn head(layer: usize, head: usize) -> HeadId {
    HeadId { layer, head }
}

fn at(anchor: Anchor, offset: i64) -> PositionItem {
    PositionItem::One(Position { anchor, offset })
}

fn label(name: &str) -> Anchor {
    Anchor::Label {
        name: name.to_string(),
        token: SlotToken::Last,
    }
}

fn circuit<'a>(file: &'a BoundFile, name: &str) -> &'a BoundCircuit {
    file.circuits.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn settings_default_when_unsaid() {
    let file = resolve_ok("circuit c { 9.1 @ END }").file;
    let s = &file.settings;
    assert_eq!(s.model, ModelSource::default_model());
    assert_eq!(
        s.dataset,
        DatasetSource::Builtin {
            name: "seqcont.numerals".into(),
            params: BTreeMap::new()
        }
    );
    assert_eq!(s.reference, ReferenceSet::Corrupt);
    assert_eq!(s.ablation, AblationKind::Mean);
    assert_eq!(s.edge_ablation, EdgeAblation::EdgeMean);
    assert_eq!(s.scope, Scope::Heads);
    assert_eq!(s.metric, Metric::LogitDiff);
    assert_eq!(s.alignment, Alignment::Position);
}

#[test]
fn settings_as_written_with_paths_relative_to_the_file() {
    let file = resolve_ok(
        "model \"models/m\"\ndataset d = ioi(n = 8, name = \"x\", on = true, t = 0.5)\ndataset r = ioi\nreference r\n\
         ablate heads and mlps by zero\nablate edges by knockout\nmetric kl\nalign by label\n",
    )
    .file;
    let s = &file.settings;
    assert_eq!(s.model, ModelSource::Dir(PathBuf::from("base/models/m")));
    let mut params = BTreeMap::new();
    params.insert("n".to_string(), ParamValue::Int(8));
    params.insert("name".to_string(), ParamValue::Str("x".into()));
    params.insert("on".to_string(), ParamValue::Bool(true));
    params.insert("t".to_string(), ParamValue::Float(0.5));
    assert_eq!(
        s.dataset,
        DatasetSource::Builtin {
            name: "ioi".into(),
            params
        }
    );
    assert_eq!(
        s.reference,
        ReferenceSet::Dataset(DatasetSource::Builtin {
            name: "ioi".into(),
            params: BTreeMap::new()
        })
    );
    assert_eq!(
        (s.ablation, s.edge_ablation, s.scope, s.metric, s.alignment),
        (
            AblationKind::Zero,
            EdgeAblation::Knockout,
            Scope::HeadsAndMlps,
            Metric::Kl,
            Alignment::Label
        )
    );
    let jsonl = resolve_err("dataset d = \"data/p.jsonl\"");
    // The fake environment has no JSONL datasets; the error names the path made relative to the file.
    assert!(
        jsonl.items[0].message.contains("base/data/p.jsonl"),
        "{}",
        jsonl.items[0].message
    );
}

#[test]
fn reference_forms() {
    let clean = resolve_ok("dataset d = ioi\nreference d").file;
    assert_eq!(clean.settings.reference, ReferenceSet::Clean);
    let clean = resolve_ok("dataset d = ioi\nreference d.clean").file;
    assert_eq!(clean.settings.reference, ReferenceSet::Clean);
    let corrupt = resolve_ok("dataset d = ioi\nreference d.corrupt").file;
    assert_eq!(corrupt.settings.reference, ReferenceSet::Corrupt);
}

#[test]
fn a_group_and_the_list_it_names_resolve_identically() {
    let with_group = resolve_ok("heads g = 9.9, 9.6, 10.*\ncircuit c { g @ END, S1+1 }").file;
    let with_list = resolve_ok("circuit c { 9.9, 9.6, 10.* @ END, S1+1 }").file;
    assert_eq!(with_group.circuits[0].heads, with_list.circuits[0].heads);
    assert_eq!(with_list.circuits[0].heads.len(), 14);
    assert_eq!(
        with_list.circuits[0].heads[&head(9, 9)],
        PositionSet::Items(vec![at(Anchor::End, 0), at(label("S1"), 1)])
    );
}

#[test]
fn extends_overrides_positions_and_equals_the_spelled_out_circuit() {
    let file = resolve_ok(
        "circuit base {\n  9.9, 9.6 @ END\n  2.2 @ S1+1\n  edge 2.2: S1 -> S1+1\n  mlp 3\n  expect faithfulness > 0.5\n}\n\
         circuit derived extends base {\n  9.9 @ *\n  10.0 @ END\n}\n\
         circuit spelled {\n  9.9 @ *\n  9.6 @ END\n  2.2 @ S1+1\n  edge 2.2: S1 -> S1+1\n  mlp 3\n  10.0 @ END\n}\n",
    )
    .file;
    let derived = circuit(&file, "derived");
    let spelled = circuit(&file, "spelled");
    assert_eq!(derived.heads, spelled.heads);
    assert_eq!(derived.mlps, spelled.mlps);
    assert_eq!(derived.qk_edges.len(), 1);
    assert_eq!(derived.heads[&head(9, 9)], PositionSet::All);
    assert_eq!(
        derived.heads[&head(9, 6)],
        PositionSet::Items(vec![at(Anchor::End, 0)])
    );
    // Expectations belong to the circuit that states them.
    assert!(derived.expectations.is_empty());
    assert_eq!(circuit(&file, "base").expectations.len(), 1);
}

#[test]
fn extends_chains_are_followed_in_any_order() {
    let file = resolve_ok(
        "circuit c extends b { 3.3 @ END }\ncircuit b extends a { 2.2 @ END }\ncircuit a { 1.1 @ END }",
    )
    .file;
    let c = circuit(&file, "c");
    assert_eq!(
        c.heads.keys().copied().collect::<Vec<_>>(),
        vec![head(1, 1), head(2, 2), head(3, 3)]
    );
    // File order is kept.
    assert_eq!(
        file.circuits
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec!["c", "b", "a"]
    );
}

#[test]
fn drop_removes_components_and_their_edges() {
    let file = resolve_ok(
        "ablate heads and mlps by mean\n\
         circuit base {\n  2.2 @ S1+1\n  edge 2.2: S1 -> S1+1\n  edge 2.2 -> 9.1.q\n  edge mlp 3 -> logits\n  9.1, 9.2 @ END\n  mlp 3\n}\n\
         circuit smaller extends base {\n  drop 2.2, mlp 3\n}\n",
    )
    .file;
    let smaller = circuit(&file, "smaller");
    assert_eq!(
        smaller.heads.keys().copied().collect::<Vec<_>>(),
        vec![head(9, 1), head(9, 2)]
    );
    assert!(smaller.mlps.is_empty());
    assert!(smaller.qk_edges.is_empty());
    assert!(smaller.path_edges.is_empty());
    let base = circuit(&file, "base");
    assert_eq!(base.path_edges.len(), 2);
    assert_eq!(base.path_edges[0].from, Upstream::Head(head(2, 2)));
    assert_eq!(
        base.path_edges[0].to,
        Downstream::Head(head(9, 1), HeadInput::Q)
    );
    assert_eq!(base.path_edges[0].positions, PositionSet::All);
    assert_eq!(base.path_edges[1].to, Downstream::Logits);
}

#[test]
fn a_head_listed_twice_keeps_the_union_and_warns() {
    let resolved = resolve_ok("circuit c {\n  9.1 @ END\n  9.1 @ S1, END\n}");
    assert_eq!(
        resolved.file.circuits[0].heads[&head(9, 1)],
        PositionSet::Items(vec![at(Anchor::End, 0), at(label("S1"), 0)])
    );
    assert_eq!(resolved.warnings.items.len(), 1);
    assert_eq!(
        resolved.warnings.items[0].code,
        "circuit::resolve::duplicate_head"
    );
}

#[test]
fn qk_edges_expand_over_groups_and_pairs() {
    let file = resolve_ok(
        "heads g = 1.1, 1.2\ncircuit c {\n  g @ *\n  edge g: S1 -> S1+1, first(S2)..S3 -> END\n}",
    )
    .file;
    let edges = &file.circuits[0].qk_edges;
    assert_eq!(edges.len(), 4);
    assert_eq!(edges[0].head, head(1, 1));
    assert_eq!(edges[0].keys, at(label("S1"), 0));
    assert_eq!(edges[0].queries, at(label("S1"), 1));
    assert_eq!(
        edges[1].keys,
        PositionItem::Range(
            Position {
                anchor: Anchor::Label {
                    name: "S2".into(),
                    token: SlotToken::First
                },
                offset: 0
            },
            Position {
                anchor: label("S3"),
                offset: 0
            },
        )
    );
}

#[test]
fn expectations_bind_quantities_of_this_and_other_circuits() {
    let file = resolve_ok(
        "circuit base { 9.1 @ END }\ncircuit c {\n  9.1 @ *\n  expect faithfulness >= base.faithfulness - 0.01\n  expect -logprob < 0.5 * (full.logprob + empty.logprob)\n}",
    )
    .file;
    let e = &circuit(&file, "c").expectations;
    assert_eq!(e[0].text, "faithfulness >= base.faithfulness - 0.01");
    assert_eq!(
        e[0].lhs,
        ValueExpr::Quantity {
            circuit: None,
            quantity: Quantity::Faithfulness
        }
    );
    assert_eq!(e[0].comparison, Comparison::Ge);
    assert_eq!(
        e[0].rhs,
        ValueExpr::Sub(
            Box::new(ValueExpr::Quantity {
                circuit: Some("base".into()),
                quantity: Quantity::Faithfulness
            }),
            Box::new(ValueExpr::Number(0.01)),
        )
    );
    assert_eq!(
        e[1].rhs,
        ValueExpr::Mul(
            Box::new(ValueExpr::Number(0.5)),
            Box::new(ValueExpr::Add(
                Box::new(ValueExpr::Quantity {
                    circuit: None,
                    quantity: Quantity::Full(Metric::Logprob)
                }),
                Box::new(ValueExpr::Quantity {
                    circuit: None,
                    quantity: Quantity::Empty(Metric::Logprob)
                }),
            )),
        )
    );
}

#[test]
fn every_error_of_a_file_is_reported() {
    let d = resolve_err(
        "circuit a extends nowhere {\n  12.0 @ END\n  3.12 @ S9\n  nogroup @ END\n  mlp 40\n  expect nocircuit.ratio > 0\n  expect speed > 0\n}",
    );
    let codes: Vec<&str> = d.items.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(
        codes,
        vec![
            "circuit::resolve::unknown_circuit",
            "circuit::resolve::unknown_head",
            "circuit::resolve::unknown_head",
            "circuit::resolve::unknown_label",
            "circuit::resolve::unknown_group",
            "circuit::resolve::unknown_mlp",
            "circuit::resolve::unknown_circuit",
            "circuit::resolve::unknown_quantity",
        ]
    );
    assert!(d
        .items
        .iter()
        .all(|d| !d.labels.is_empty() && d.help.is_some()));
}

#[test]
fn the_real_environment_reads_config_json() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ok/ioi.circuit");
    let resolved = load_file(&path, &RealEnvironment, &ResolveOptions::default()).unwrap();
    assert_eq!(resolved.file.circuits.len(), 2);
    assert!(resolved.warnings.is_empty());
    let override_model = ResolveOptions {
        model_override: Some(ModelSource::Dir(PathBuf::from("/nonexistent/model"))),
        ..ResolveOptions::default()
    };
    let err = load_file(&path, &RealEnvironment, &override_model).unwrap_err();
    assert_eq!(err.items[0].code, "circuit::resolve::model");
    assert!(err.items[0].message.contains("does not exist"));
}

#[test]
fn failures_convert_into_a_miette_report() {
    let d = resolve_err("circuit c { 12.0 @ END }");
    let report = miette::Report::new(d);
    let text = format!("{report:?}");
    assert!(text.contains("layer 12 does not exist"), "{text}");
}

#[test]
fn nested_groups_do_not_blow_up() {
    // 30 levels, each naming the previous group three times: 3^30 heads if not deduplicated.
    let mut text = String::from("heads g0 = 1.1, 2.*\n");
    for i in 1..30 {
        let p = i - 1;
        text.push_str(&format!("heads g{i} = g{p}, g{p}, g{p}\n"));
    }
    text.push_str("circuit c { g29 @ END }\n");
    let file = resolve_ok(&text).file;
    assert_eq!(file.circuits[0].heads.len(), 13);
}

#[test]
fn huge_ranges_without_a_model_are_not_expanded() {
    let d = language_support::resolve_in(
        "tests/fixtures/ok",
        "t.circuit",
        "model \"missing\"\ncircuit c { 0..18446744073709551615.* @ END\n mlp 0..18446744073709551615 }",
    )
    .unwrap_err();
    assert_eq!(d.items[0].code, "circuit::resolve::model");
}

#[test]
fn keys_may_be_every_token_or_up_to_a_position() {
    let file = resolve_ok("circuit c {\n  edge 0.1: * -> END, ..S1 -> S2, S1..S4 -> END\n}").file;
    let edges = &file.circuits[0].qk_edges;
    let start = Position {
        anchor: Anchor::Start,
        offset: 0,
    };
    let pos = |anchor| Position { anchor, offset: 0 };
    assert_eq!(
        edges[0].keys,
        PositionItem::Range(start.clone(), pos(Anchor::End))
    );
    assert_eq!(edges[0].keys.display_name(), "*");
    assert_eq!(edges[1].keys, PositionItem::Range(start, pos(label("S1"))));
    assert_eq!(edges[1].keys.display_name(), "..S1");
    assert_eq!(edges[2].keys.display_name(), "S1..S4");
    // An edge implies its node (the plan keeps the head at the edge's queries): no warning.
    assert!(resolve_ok("circuit c { edge 0.1: * -> END }")
        .warnings
        .is_empty());
}

#[test]
fn a_key_after_its_query_whatever_the_tokens_is_an_error() {
    let d = resolve_err("circuit c { edge 0.1: S1+1 -> S1 }");
    assert_eq!(d.items[0].code, "circuit::resolve::key_after_query");
    assert_eq!(d.error_count(), 1);
    // Depends on the prompt (END may be S1): left to evaluation.
    assert!(resolve_ok("circuit c { 0.1 @ S1  edge 0.1: END -> S1 }")
        .warnings
        .is_empty());
    // A range whose first key is at or before the last query is fine.
    resolve_ok("circuit c { edge 0.1: S1..S2 -> S1..S2, S1 -> S1 }");
}

#[test]
fn a_file_without_circuits_warns() {
    for text in ["", "\n", "dataset d = ioi\n"] {
        let resolved = resolve_ok(text);
        let codes: Vec<&str> = resolved
            .warnings
            .items
            .iter()
            .map(|d| d.code.as_str())
            .collect();
        assert!(
            codes.contains(&"circuit::resolve::no_circuit"),
            "{text:?}: {codes:?}"
        );
    }
    assert!(resolve_ok("circuit c { 9.1 @ END }").warnings.is_empty());
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let file = resolve_ok("\u{FEFF}circuit c { 9.1 @ END }").file;
    assert_eq!(file.circuits[0].name, "c");
}

#[test]
fn names_are_ascii_and_the_error_says_so() {
    let d = resolve_err("heads övers = 9.1\ncircuit c { övers @ END }");
    let help = d.items[0].help.clone().unwrap_or_default();
    assert_eq!(d.items[0].code, "circuit::parse::syntax");
    assert!(help.contains("names are ASCII"), "{help}");
    assert!(help.contains("`övers`"), "{help}");
}

#[test]
fn fmt_keeps_crlf_line_endings() {
    use circuit::syntax::format_source;
    let crlf = "dataset d = ioi  # c\r\ncircuit c {\r\n  9.1 @ END\r\n}\r\n";
    let formatted = format_source("c.circuit", crlf).unwrap();
    assert!(formatted.contains("\r\n"), "{formatted:?}");
    assert_eq!(
        formatted.matches('\n').count(),
        formatted.matches("\r\n").count(),
        "every line break is CRLF: {formatted:?}"
    );
    assert_eq!(
        format_source("c.circuit", &formatted).unwrap(),
        formatted,
        "idempotent"
    );
    let lf = format_source("c.circuit", &crlf.replace("\r\n", "\n")).unwrap();
    assert!(!lf.contains('\r'));
    assert_eq!(lf, formatted.replace("\r\n", "\n"));
}

/// An environment whose dataset labels only some prompts and whose tokenizer's BOS is known.
struct LabelEnvironment {
    common: Vec<&'static str>,
    partial: Vec<(&'static str, &'static str)>,
    adds_bos: Option<bool>,
}

impl circuit::resolve::Environment for LabelEnvironment {
    fn model_config(&self, _: &ModelSource) -> Result<circuit::model::ModelConfig, String> {
        circuit::model::ModelConfig::from_dir(Path::new(language_support::GPT2_SMALL))
            .map_err(|e| e.to_string())
    }
    fn dataset_labels(&self, _: &DatasetSource) -> Result<Vec<String>, String> {
        Ok(self.common.iter().map(|s| s.to_string()).collect())
    }
    fn dataset_partial_labels(&self, _: &DatasetSource) -> Vec<circuit::resolve::PartialLabel> {
        self.partial
            .iter()
            .map(|(label, prompt)| circuit::resolve::PartialLabel {
                label: label.to_string(),
                missing_from: prompt.to_string(),
            })
            .collect()
    }
    fn tokenizer_adds_bos(&self, _: &ModelSource) -> Option<bool> {
        self.adds_bos
    }
}

fn label_help(env: &LabelEnvironment, text: &str) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match circuit::resolve::resolve_source("t.circuit", text, root, env, &ResolveOptions::default())
    {
        Ok(_) => vec![],
        Err(d) => d
            .items
            .iter()
            .map(|d| (d.code.clone(), d.help.clone().unwrap_or_default()))
            .collect(),
    }
}

#[test]
fn unknown_label_help_lists_the_labels_and_offers_bos_only_with_a_bos_token() {
    let env = LabelEnvironment {
        common: vec!["S1", "S2"],
        partial: vec![],
        adds_bos: Some(false),
    };
    let found = label_help(&env, "circuit c { 0.1 @ S3 }");
    assert_eq!(found[0].0, "circuit::resolve::unknown_label");
    let help = &found[0].1;
    assert!(help.contains("labels `S1`, `S2`"), "{help}");
    assert!(
        help.contains("adds no BOS") && !help.contains("`BOS` (this"),
        "{help}"
    );
    // With a BOS token, BOS is offered.
    let with_bos = LabelEnvironment {
        adds_bos: Some(true),
        ..env
    };
    let help = &label_help(&with_bos, "circuit c { 0.1 @ S3 }")[0].1;
    assert!(help.contains("`END` and `BOS`"), "{help}");
}

#[test]
fn unknown_label_help_says_which_prompt_lacks_a_label_only_some_prompts_have() {
    let env = LabelEnvironment {
        common: vec![],
        partial: vec![
            ("S1", "reference prompt 0 (\"a b\")"),
            ("S2", "reference prompt 0 (\"a b\")"),
        ],
        adds_bos: None,
    };
    let help = &label_help(&env, "circuit c { 0.1 @ S1 }")[0].1;
    assert!(
        help.contains("`S1` is not in every prompt (it is missing from reference prompt 0"),
        "{help}"
    );
    assert!(
        help.contains("has no label that every prompt defines"),
        "{help}"
    );
    assert!(!help.contains("labels ;"), "no empty list: {help}");
    assert!(help.contains("`BOS` when the tokenizer adds one"), "{help}");
}

#[test]
fn bos_without_a_bos_token_is_an_error() {
    let env = LabelEnvironment {
        common: vec!["S1"],
        partial: vec![],
        adds_bos: Some(false),
    };
    let found = label_help(&env, "circuit c { 0.1 @ BOS }");
    assert_eq!(found[0].0, "circuit::resolve::no_bos");
    let with_bos = LabelEnvironment {
        adds_bos: Some(true),
        ..env
    };
    assert!(label_help(&with_bos, "circuit c { 0.1 @ BOS }").is_empty());
}

#[test]
fn the_real_environment_finds_labels_only_some_prompts_have_and_the_tokenizers_bos() {
    use circuit::resolve::Environment;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"1 2 3\", \"slots\": {\"S1\": [0, 1], \"S2\": [2, 3]}, \"answer\": \" 4\", \"distractor\": \" 3\"}\n\
         {\"prompt\": \"5 6 7\", \"slots\": {\"S1\": [0, 1]}, \"answer\": \" 8\", \"distractor\": \" 7\"}\n\
         {\"prompt\": \"9 8\", \"set\": \"reference\"}\n",
    )
    .unwrap();
    let source = DatasetSource::File(path);
    let env = RealEnvironment;
    assert_eq!(env.dataset_labels(&source).unwrap(), vec!["S1".to_string()]);
    let partial = env.dataset_partial_labels(&source);
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert_eq!(partial[0].label, "S2");
    // An evaluated prompt lacks it; the bare reference prompt's labels are not asked for (only
    // `align by label` reads them).
    assert!(
        partial[0].missing_from.starts_with("prompt 1"),
        "{partial:?}"
    );
    // The built-in toy model's word-level tokenizer adds none; stories260K's (Llama) adds one.
    assert_eq!(
        env.tokenizer_adds_bos(&ModelSource::default_model()),
        Some(false)
    );
    let stories = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/stories260K");
    assert_eq!(
        env.tokenizer_adds_bos(&ModelSource::Dir(stories)),
        Some(true)
    );
    let gpt2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tokenizer");
    assert_eq!(env.tokenizer_adds_bos(&ModelSource::Dir(gpt2)), Some(false));
}
