//! Built-in generators: deterministic per seed, exactly the formats the default model is trained
//! on, labels that resolve under both test tokenizers, single-token answers under GPT-2.

use std::collections::BTreeSet;

use circuit::data::jsonl::write;
use circuit::data::tokenized::tokenize_prompt;
use circuit::data::{
    check_equal_lengths, check_paired_lengths, label_names, load, tokenize_dataset, DataError,
    Dataset, DatasetSource, ParamValue, PromptSet,
};

mod data_support;
use data_support::{gpt2, stories};

const SEQCONT: [&str; 5] = [
    "seqcont.numerals",
    "seqcont.number_words",
    "seqcont.months",
    "seqcont.days",
    "seqcont.letters",
];

fn source(name: &str, params: &[(&str, ParamValue)]) -> DatasetSource {
    DatasetSource::Builtin {
        name: name.to_string(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn int(v: i64) -> ParamValue {
    ParamValue::Int(v)
}

fn text(v: &str) -> ParamValue {
    ParamValue::Str(v.to_string())
}

fn generate(name: &str, params: &[(&str, ParamValue)]) -> Dataset {
    load(&source(name, params)).unwrap()
}

/// Every built-in with each of its forms.
fn all_variants(n: i64) -> Vec<(String, Vec<(&'static str, ParamValue)>)> {
    let mut out = Vec::new();
    for name in SEQCONT {
        for form in ["bare", "template"] {
            out.push((name.to_string(), vec![("n", int(n)), ("form", text(form))]));
        }
    }
    out.push(("ioi".to_string(), vec![("n", int(n))]));
    out
}

fn members(kind: &str) -> Vec<String> {
    let lexicon: serde_json::Value =
        serde_json::from_str(include_str!("../src/data/lexicon.json")).unwrap();
    lexicon["sequences"][kind]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn same_seed_same_jsonl_other_seed_other_prompts() {
    for (name, params) in all_variants(16) {
        let with_seed = |seed| {
            let mut p = params.clone();
            p.push(("seed", int(seed)));
            write(&generate(&name, &p))
        };
        let a = with_seed(3);
        assert_eq!(a, with_seed(3), "{name}");
        assert_ne!(a, with_seed(4), "{name}");
        assert_eq!(a.lines().count(), 16);
    }
}

#[test]
fn fewer_prompts_are_a_prefix_of_more() {
    let small = generate("seqcont.days", &[("n", int(5)), ("form", text("template"))]);
    let large = generate(
        "seqcont.days",
        &[("n", int(40)), ("form", text("template"))],
    );
    assert_eq!(small.clean[..], large.clean[..5]);
    assert_eq!(small.reference[..], large.reference[..5]);
}

/// Pins the first prompts of seed 0, so a change of RNG, draw order or format is seen (the
/// default model is trained on these prompts).
#[test]
fn seed_zero_prompts_are_pinned() {
    let d = generate("seqcont.numerals", &[("n", int(2))]);
    assert_eq!(d.clean[0].prompt, "63 64 65 66");
    assert_eq!(d.clean[0].answer.as_deref(), Some(" 67"));
    assert_eq!(d.clean[0].distractor.as_deref(), Some(" 66"));
    assert_eq!(d.reference[0].prompt, "71 73 47 51");
    assert_eq!(d.clean[1].prompt, "67 68 69 70");
    let d = generate(
        "seqcont.months",
        &[("n", int(1)), ("len", int(3)), ("form", text("template"))],
    );
    assert_eq!(
        d.clean[0].prompt,
        "Mike born in August. Jane born in September. Peter born in October. Alice born in"
    );
    assert_eq!(d.clean[0].answer.as_deref(), Some(" November"));
    let d = generate("ioi", &[("n", int(1))]);
    assert_eq!(
        d.clean[0].prompt,
        "Then, David and Mary went to the school. Mary gave a computer to"
    );
    assert_eq!(
        d.reference[0].prompt,
        "Then, Sarah and Mark went to the school. James gave a computer to"
    );
}

#[test]
fn sequences_continue_and_wrap_only_where_they_should() {
    for name in SEQCONT {
        let kind = name.trim_start_matches("seqcont.");
        let list = members(kind);
        let wraps = matches!(kind, "months" | "days");
        let mut wrapped = 0;
        for len in 2..=6 {
            let d = generate(
                name,
                &[("n", int(64)), ("len", int(len)), ("seed", int(len))],
            );
            for r in &d.clean {
                let shown: Vec<&str> = r.prompt.split(' ').collect();
                assert_eq!(shown.len(), len as usize, "{}", r.prompt);
                assert_eq!(r.prompt, shown.join(" "), "single spaces");
                let index: Vec<usize> = shown
                    .iter()
                    .map(|m| list.iter().position(|x| x == m).unwrap())
                    .collect();
                for w in index.windows(2) {
                    assert_eq!(w[1], (w[0] + 1) % list.len(), "{}", r.prompt);
                }
                let next = index[index.len() - 1] + 1;
                if next == list.len() {
                    assert!(wraps, "{name} must not wrap: {}", r.prompt);
                    wrapped += 1;
                }
                assert_eq!(r.answer, Some(format!(" {}", list[next % list.len()])));
                assert_eq!(r.distractor, Some(format!(" {}", shown[shown.len() - 1])));
                for (j, m) in shown.iter().enumerate() {
                    assert_eq!(r.slot_text(&format!("S{}", j + 1)), Some(*m));
                }
                assert_eq!(r.slots.len(), len as usize);
            }
        }
        if wraps {
            assert!(wrapped > 0, "{name}: no prompt wrapped around");
        }
    }
}

#[test]
fn template_form_matches_the_lexicon_sentences() {
    let d = generate(
        "seqcont.numerals",
        &[
            ("n", int(32)),
            ("form", text("template")),
            ("distractor", text("first")),
        ],
    );
    for (clean, reference) in d.clean.iter().zip(&d.reference) {
        let sentences: Vec<&str> = clean.prompt.split(". ").collect();
        assert_eq!(sentences.len(), 5, "{}", clean.prompt);
        let mut fillers = BTreeSet::new();
        for (j, s) in sentences.iter().enumerate() {
            let words: Vec<&str> = s.split(' ').collect();
            assert_eq!(&words[1..3], ["done", "in"], "{s}");
            fillers.insert(words[0]);
            if j < 4 {
                let member = words[3].trim_end_matches('.');
                assert_eq!(clean.slot_text(&format!("S{}", j + 1)), Some(member));
            } else {
                assert_eq!(words.len(), 3, "query sentence: {s}");
            }
        }
        assert_eq!(fillers.len(), 5, "distinct fillers: {}", clean.prompt);
        assert!(!clean.prompt.ends_with(' ') && !clean.prompt.contains("  "));
        assert_eq!(
            clean.distractor,
            Some(format!(" {}", clean.slot_text("S1").unwrap()))
        );
        // The reference keeps template and fillers; only the members change.
        let strip = |r: &circuit::data::Record| {
            let mut p = r.prompt.clone();
            for label in ["S4", "S3", "S2", "S1"] {
                let span = r.slots[label];
                p.replace_range(span.start..span.end, "#");
            }
            p
        };
        assert_eq!(strip(clean), strip(reference));
        assert_eq!(reference.answer, clean.answer);
    }
}

#[test]
fn ioi_prompts_and_abc_references() {
    let d = generate("ioi", &[("n", int(64)), ("seed", int(9))]);
    assert!(d.paired);
    for (clean, reference) in d.clean.iter().zip(&d.reference) {
        let io = clean.slot_text("IO").unwrap();
        let s1 = clean.slot_text("S1").unwrap();
        assert_eq!(clean.slot_text("S2"), Some(s1));
        assert_ne!(io, s1);
        assert_eq!(clean.answer, Some(format!(" {io}")));
        assert_eq!(clean.distractor, Some(format!(" {s1}")));
        let abc: BTreeSet<&str> = ["IO", "S1", "S2"]
            .iter()
            .map(|l| reference.slot_text(l).unwrap())
            .collect();
        assert_eq!(abc.len(), 3, "three different names: {}", reference.prompt);
        assert_eq!(reference.slot_text("PLACE"), clean.slot_text("PLACE"));
        assert_eq!(reference.slot_text("OBJECT"), clean.slot_text("OBJECT"));
        assert!(clean.prompt.ends_with(" to"));
    }
    // A fixed template changes only the sentence, not the names drawn.
    let fixed = generate(
        "ioi",
        &[("n", int(64)), ("seed", int(9)), ("template", int(1))],
    );
    for (free, fixed) in d.clean.iter().zip(&fixed.clean) {
        assert!(
            fixed.prompt.starts_with("When ") && fixed.prompt.ends_with("decided to give it to")
        );
        assert_eq!(free.slot_text("IO"), fixed.slot_text("IO"));
        assert_eq!(free.slot_text("S2"), fixed.slot_text("S2"));
    }
}

#[test]
fn label_names_match_every_generated_prompt() {
    for (name, params) in all_variants(8) {
        let labels = label_names(&source(&name, &params)).unwrap();
        let dataset = generate(&name, &params);
        let expected: BTreeSet<String> = labels.iter().cloned().collect();
        for r in dataset.clean.iter().chain(&dataset.reference) {
            let have: BTreeSet<String> = r.slots.keys().cloned().collect();
            assert_eq!(have, expected, "{name}: {}", r.prompt);
        }
    }
    let labels = label_names(&source("seqcont.letters", &[("len", int(6))])).unwrap();
    assert_eq!(labels, ["S1", "S2", "S3", "S4", "S5", "S6"]);
}

#[test]
fn every_label_resolves_under_both_tokenizers() {
    for (name, params) in all_variants(24) {
        let dataset = generate(&name, &params);
        for tokenizer in [gpt2(), stories()] {
            for (set, records) in [
                (PromptSet::Clean, &dataset.clean),
                (PromptSet::Reference, &dataset.reference),
            ] {
                for (i, r) in records.iter().enumerate() {
                    let id = circuit::data::record::prompt_id(set, i, r);
                    let tokens = tokenize_prompt(r, tokenizer, &id).unwrap();
                    for (label, span) in &r.slots {
                        let slot = tokens.slots[label];
                        let (first_start, _) = tokens.offsets[slot.first];
                        let (_, last_end) = tokens.offsets[slot.last];
                        // The slot's tokens cover its text and nothing before its first
                        // byte's token or after its last byte's token.
                        assert!(
                            first_start <= span.start && last_end >= span.end,
                            "{name} {label}: {}",
                            r.prompt
                        );
                        assert!(tokens.offsets[slot.first].1 > span.start);
                        assert!(tokens.offsets[slot.last].0 < span.end);
                        assert!(slot.first <= slot.last);
                    }
                }
            }
        }
    }
}

#[test]
fn answers_are_single_gpt2_tokens_and_lengths_match() {
    for (name, params) in all_variants(64) {
        let dataset = generate(&name, &params);
        let tokenized = tokenize_dataset(&dataset, gpt2()).unwrap();
        for p in &tokenized.clean {
            assert_ne!(p.answer_id, p.distractor_id, "{name}: {}", p.text);
        }
        // Template and fillers are shared and every member is one GPT-2 token after a space,
        // so each reference prompt is as long as its clean prompt; except bare number words:
        // "eleven"…"twenty" at the very start of a prompt (no space) are two GPT-2 tokens.
        let bare_words = name == "seqcont.number_words" && params.contains(&("form", text("bare")));
        match check_paired_lengths(&tokenized.clean, &tokenized.reference) {
            Ok(()) => assert!(!bare_words, "{name}: expected a length mismatch"),
            Err(err) => {
                assert!(bare_words, "{name}: {err}");
                assert!(matches!(err, DataError::ReferenceLength { .. }), "{err}");
            }
        }
    }
    let start = gpt2().encode("eleven twelve").unwrap();
    assert_eq!(start.ids.len(), 3, "\"eleven\" at the start is two tokens");
}

#[test]
fn under_stories260k_multi_token_answers_get_the_clear_error() {
    let dataset = generate("seqcont.numerals", &[("n", int(4))]);
    let err = tokenize_dataset(&dataset, stories()).unwrap_err();
    assert!(
        matches!(err, DataError::MultiTokenAnswer { what: "answer", .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("prompt 0 (\"63 64 65 66\")"),
        "{err}"
    );
    assert!(err.to_string().contains("\"6\""), "{err}");
}

#[test]
fn bad_parameters_are_clear_errors() {
    type Case = (&'static str, Vec<(&'static str, ParamValue)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "seqcont.numerals",
            vec![("len", int(7))],
            "`len` is 7; it must be in 2..=6",
        ),
        ("seqcont.numerals", vec![("len", int(1))], "2..=6"),
        ("seqcont.numerals", vec![("n", int(0))], "`n` is 0"),
        (
            "seqcont.numerals",
            vec![("form", text("prose"))],
            "\"prose\"",
        ),
        (
            "seqcont.numerals",
            vec![("distractor", text("random"))],
            "\"random\"",
        ),
        (
            "seqcont.numerals",
            vec![("seed", text("x"))],
            "must be an integer",
        ),
        (
            "seqcont.numerals",
            vec![("form", int(1))],
            "must be a string",
        ),
        (
            "seqcont.numerals",
            vec![("size", int(1))],
            "unknown parameter `size`",
        ),
        ("ioi", vec![("len", int(3))], "unknown parameter `len`"),
        (
            "ioi",
            vec![("template", int(4))],
            "`template` is 4; it must be in 0..=3",
        ),
    ];
    for (name, params, needle) in cases {
        let err = load(&source(name, &params)).unwrap_err();
        assert!(matches!(err, DataError::BadParameter { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{name}: {err}");
        // label_names checks parameters the same way.
        assert!(label_names(&source(name, &params)).is_err());
    }
    let err = load(&source("seqcont.digit", &[])).unwrap_err();
    assert!(matches!(err, DataError::UnknownBuiltin { .. }));
    let help = miette::Diagnostic::help(&err).unwrap().to_string();
    assert!(help.contains("seqcont.numerals"), "{help}");
}

/// Which built-ins have one token length across all clean and reference prompts under GPT-2, as
/// mean ablation by token position needs (docs/datasets.md states the result).
#[test]
fn uniform_token_length_under_gpt2() {
    let mut variants = all_variants(64);
    for template in 0..4 {
        variants.push((
            "ioi".into(),
            vec![("n", int(64)), ("template", int(template))],
        ));
    }
    let mut uniform = Vec::new();
    for (name, params) in variants {
        let tokenized = tokenize_dataset(&generate(&name, &params), gpt2())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match check_equal_lengths(&tokenized.clean, &tokenized.reference) {
            Ok(()) => uniform.push(format!("{name} {params:?}")),
            Err(err) => assert!(matches!(err, DataError::ReferenceLength { .. }), "{err}"),
        }
    }
    let expected: Vec<String> = [
        ("seqcont.numerals", "bare"),
        ("seqcont.months", "bare"),
        ("seqcont.days", "bare"),
        ("seqcont.letters", "bare"),
    ]
    .iter()
    .map(|(name, form)| format!("{name} {:?}", vec![("n", int(64)), ("form", text(form))]))
    .chain((0..4).map(|t| format!("ioi {:?}", vec![("n", int(64)), ("template", int(t))])))
    .collect();
    assert_eq!(uniform, expected);
}

/// Two prompts of every built-in and form, seed 0: the formats the default model is trained on,
/// pinned for review.
#[test]
fn sample_of_every_builtin() {
    let mut out = String::new();
    for (name, params) in all_variants(2) {
        out.push_str(&format!("# {name} {params:?}\n"));
        out.push_str(&write(&generate(&name, &params)));
    }
    insta::assert_snapshot!(out);
}
