//! The JSONL dataset format: character spans, templates, paired and unpaired reference prompts,
//! and the errors a malformed file gets.

use std::collections::BTreeMap;
use std::path::Path;

use circuit::data::jsonl::{fill_template, parse, write};
use circuit::data::{label_names, load, DataError, DatasetSource, Span};

fn parse_str(text: &str) -> Result<circuit::data::Dataset, DataError> {
    parse(text, Path::new("test.jsonl"))
}

#[test]
fn character_spans_convert_to_byte_spans_in_non_ascii_prompts() {
    // "Zoë" is 3 characters but 4 bytes; "日本" is 2 characters but 6 bytes.
    let line = r#"{"prompt": "Zoë met 日本 and Bo, then Bo", "slots": {"IO": [0, 3], "PLACE": [8, 10], "S1": [15, 17], "S2": [24, 26]}, "answer": " Zoë", "distractor": " Bo"}"#;
    let dataset = parse_str(line).unwrap();
    let r = &dataset.clean[0];
    assert_eq!(r.slots["IO"], Span::new(0, 4));
    assert_eq!(r.slot_text("IO"), Some("Zoë"));
    assert_eq!(r.slot_text("PLACE"), Some("日本"));
    assert_eq!(r.slot_text("S1"), Some("Bo"));
    assert_eq!(r.slot_text("S2"), Some("Bo"));
    assert_eq!(r.slots["S2"].to_chars(&r.prompt), (24, 26));
    assert!(dataset.reference.is_empty());
    assert!(!dataset.paired);
}

#[test]
fn template_form_places_fillers_and_labels() {
    let line = r#"{"template": "When {IO} and {S1} met, {S2} waved to", "fillers": {"IO": "Zoë", "S1": "Bo", "S2": "Bo"}, "answer": " Zoë", "distractor": " Bo", "reference": {"fillers": {"IO": "Al", "S1": "Cy", "S2": "Di"}}}"#;
    let dataset = parse_str(line).unwrap();
    let clean = &dataset.clean[0];
    assert_eq!(clean.prompt, "When Zoë and Bo met, Bo waved to");
    assert_eq!(clean.slot_text("IO"), Some("Zoë"));
    assert_eq!(clean.slots["S2"], Span::new(22, 24));
    assert!(dataset.paired);
    let reference = &dataset.reference[0];
    assert_eq!(reference.prompt, "When Al and Cy met, Di waved to");
    assert_eq!(reference.slot_text("S2"), Some("Di"));
    // The reference inherits answer and distractor from its clean record.
    assert_eq!(reference.answer.as_deref(), Some(" Zoë"));
    assert_eq!(reference.distractor.as_deref(), Some(" Bo"));
}

#[test]
fn template_braces_and_errors() {
    let fillers: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
    let (prompt, slots) = fill_template("{{literal}} {A}", &fillers).unwrap();
    assert_eq!(prompt, "{literal} x");
    assert_eq!(slots["A"], Span::new(10, 11));
    for (template, needle) in [
        ("{A} {B}", "`{B}` has no filler"),
        ("{A} {A}", "appears twice"),
        ("no slot", "filler `A` has no `{A}`"),
        ("{A", "without its `}`"),
        ("A}", "without its `{`"),
        ("{1A}", "not a name"),
    ] {
        let err = fill_template(template, &fillers).unwrap_err();
        assert!(err.contains(needle), "{template}: {err}");
    }
}

#[test]
fn malformed_lines_name_the_line_number() {
    let good = r#"{"prompt": "1 2", "slots": {"S1": [0, 1]}, "answer": " 3", "distractor": " 2"}"#;
    let cases = [
        ("{not json", "not a dataset record"),
        (
            r#"{"prompt": "1 2", "slots": {"S1": [0, 1]}, "answer": " 3"}"#,
            "missing `distractor` (the metric reads the distractor's logit at END of every evaluated prompt; reference prompts need none)",
        ),
        (
            r#"{"prompt": "1 2", "slots": {"S1": [0, 9]}, "answer": " 3", "distractor": " 2"}"#,
            "ends after the prompt's 3 characters",
        ),
        (
            r#"{"prompt": "1 2", "slots": {"S1": [1, 1]}, "answer": " 3", "distractor": " 2"}"#,
            "empty or reversed",
        ),
        (
            r#"{"prompt": "1 2", "slots": {"END": [0, 1]}, "answer": " 3", "distractor": " 2"}"#,
            "reserved",
        ),
        (
            r#"{"prompt": "1 2", "answer": " 3", "distractor": " 2", "colour": 1}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"prompt": "1 2", "template": "{A}", "answer": " 3", "distractor": " 2"}"#,
            "not both",
        ),
        (
            r#"{"prompt": "1 2", "answer": "", "distractor": " 2"}"#,
            "answer is empty",
        ),
        (
            r#"{"prompt": "1 2", "answer": " 3", "distractor": " 2", "set": "dirty"}"#,
            "\"dirty\"",
        ),
    ];
    for (bad, needle) in cases {
        let text = format!("{good}\n\n{bad}\n{good}\n");
        let err = parse_str(&text).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, DataError::Jsonl { line: 3, .. }),
            "{bad}: {message}"
        );
        assert!(message.starts_with("test.jsonl:3: "), "{message}");
        // The report points into line 3 (after line 1 and the blank line 2).
        let DataError::Jsonl { at, .. } = &err else {
            unreachable!()
        };
        let line_start = good.len() + 2;
        assert!(
            at.offset() >= line_start && at.offset() + at.len() <= line_start + bad.len(),
            "{bad}: {at:?}"
        );
        assert!(message.contains(needle), "{bad}: {message}");
    }
}

#[test]
fn pairing_must_be_all_or_nothing() {
    let paired = r#"{"prompt": "1 2", "slots": {"S1": [0, 1]}, "answer": " 3", "distractor": " 2", "reference": {"prompt": "5 2", "slots": {"S1": [0, 1]}}}"#;
    let unpaired =
        r#"{"prompt": "1 2", "slots": {"S1": [0, 1]}, "answer": " 3", "distractor": " 2"}"#;
    let reference = r#"{"set": "reference", "prompt": "7 7", "slots": {"S1": [0, 1]}, "answer": " 3", "distractor": " 2"}"#;
    let err = parse_str(&format!("{paired}\n{unpaired}\n")).unwrap_err();
    assert!(
        err.to_string().contains("pair every prompt or none"),
        "{err}"
    );
    let err = parse_str(&format!("{paired}\n{reference}\n")).unwrap_err();
    assert!(matches!(err, DataError::Jsonl { line: 2, .. }), "{err}");

    let dataset = parse_str(&format!("{unpaired}\n{reference}\n{unpaired}\n")).unwrap();
    assert_eq!((dataset.clean.len(), dataset.reference.len()), (2, 1));
    assert!(!dataset.paired);
    assert_eq!(dataset.reference[0].prompt, "7 7");
}

#[test]
fn empty_file_is_an_error() {
    let err = parse_str("\n  \n").unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
}

#[test]
fn written_datasets_read_back_identically() {
    for (name, params) in [
        ("seqcont.months", vec![("form", "template")]),
        ("ioi", vec![]),
    ] {
        let source = DatasetSource::Builtin {
            name: name.into(),
            params: params
                .into_iter()
                .map(|(k, v)| (k.to_string(), circuit::data::ParamValue::Str(v.into())))
                .chain([("n".to_string(), circuit::data::ParamValue::Int(5))])
                .collect(),
        };
        let dataset = load(&source).unwrap();
        let text = write(&dataset);
        let mut back = parse_str(&text).unwrap();
        back.name = dataset.name.clone();
        assert_eq!(back, dataset, "{name}");
    }
    // Unpaired references are written as `set: reference` lines.
    let text = r#"{"prompt":"Zoë 1","slots":{"S1":[4,5]},"answer":" 2","distractor":" 1"}
{"prompt":"Zoë 7","slots":{"S1":[4,5]},"answer":" 2","distractor":" 1","set":"reference"}
"#;
    let dataset = parse_str(text).unwrap();
    assert_eq!(write(&dataset), text);
}

#[test]
fn label_names_of_a_file_are_those_every_prompt_defines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("names.jsonl");
    std::fs::write(
        &path,
        r#"{"prompt": "a b c", "slots": {"B": [2, 3], "A": [0, 1], "C": [4, 5]}, "answer": " d", "distractor": " c"}
{"prompt": "a b", "slots": {"A": [0, 1], "B": [2, 3]}, "answer": " c", "distractor": " b"}
"#,
    )
    .unwrap();
    let labels = label_names(&DatasetSource::File(path.clone())).unwrap();
    assert_eq!(labels, vec!["A", "B"]);
    let dataset = load(&DatasetSource::File(path)).unwrap();
    assert_eq!(dataset.name, "names");

    let missing = DatasetSource::File(dir.path().join("absent.jsonl"));
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, DataError::Read { .. }));
    assert!(err.to_string().contains("absent.jsonl"));
}

mod properties {
    use std::collections::BTreeMap;

    use circuit::data::jsonl::fill_template;
    use circuit::data::Span;
    use proptest::prelude::*;

    proptest! {
        /// Character spans of any Unicode text convert to byte spans that slice the same
        /// characters, and back.
        #[test]
        fn char_spans_round_trip(text in "\\PC{1,40}", a in 0usize..40, b in 0usize..40) {
            let chars: Vec<char> = text.chars().collect();
            let (start, end) = (a.min(b) % chars.len(), (a.max(b) % chars.len()) + 1);
            prop_assume!(start < end);
            let span = Span::from_chars(&text, start, end).unwrap();
            let expected: String = chars[start..end].iter().collect();
            prop_assert_eq!(&text[span.start..span.end], expected.as_str());
            prop_assert_eq!(span.to_chars(&text), (start, end));
        }

        /// Every template slot's span holds exactly its filler, whatever the fillers contain.
        #[test]
        fn template_spans_hold_their_fillers(
            fillers in proptest::collection::vec("[^{}]{1,8}", 1..5),
            glue in proptest::collection::vec("[^{}]{0,5}", 6),
        ) {
            let mut template = glue[0].clone();
            let mut map = BTreeMap::new();
            for (i, filler) in fillers.iter().enumerate() {
                template.push_str(&format!("{{F{i}}}{}", glue[i + 1]));
                map.insert(format!("F{i}"), filler.clone());
            }
            let (prompt, slots) = fill_template(&template, &map).unwrap();
            for (i, filler) in fillers.iter().enumerate() {
                let span = slots[&format!("F{i}")];
                prop_assert_eq!(&prompt[span.start..span.end], filler.as_str());
            }
        }
    }
}

#[test]
fn unpaired_reference_lines_need_neither_labels_nor_answers() {
    let text = concat!(
        r#"{"prompt": "1 2 3", "slots": {"S1": [0, 1], "S2": [2, 3]}, "answer": " 4", "distractor": " 3"}"#,
        "\n",
        r#"{"prompt": "7 5 9", "set": "reference"}"#,
        "\n",
    );
    let dataset = parse_str(text).unwrap();
    let reference = &dataset.reference[0];
    assert!(reference.slots.is_empty());
    assert_eq!(
        (reference.answer.as_ref(), reference.distractor.as_ref()),
        (None, None)
    );
    // The labels a circuit may name are the evaluated prompts' (a reference prompt's labels
    // are read only under `align by label`, which checks them itself).
    assert_eq!(dataset.common_labels(), ["S1", "S2"]);
    // Written back without the absent fields, and read back to the same dataset.
    let written = write(&dataset);
    assert!(
        written
            .lines()
            .nth(1)
            .unwrap()
            .contains(r#""set":"reference""#),
        "{written}"
    );
    assert!(
        !written.lines().nth(1).unwrap().contains("answer"),
        "{written}"
    );
    assert_eq!(parse_str(&written).unwrap(), dataset);
}

#[test]
fn a_byte_order_mark_before_the_first_record_is_accepted() {
    let line = r#"{"prompt": "1 2", "slots": {"S1": [0, 1]}, "answer": " 3", "distractor": " 2"}"#;
    let with_bom = parse_str(&format!("\u{feff}{line}\n")).unwrap();
    assert_eq!(with_bom, parse_str(line).unwrap());
}
