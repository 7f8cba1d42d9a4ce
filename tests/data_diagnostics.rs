//! What a user sees for the data stage's errors: rendered miette diagnostics (code, message,
//! help), pinned as snapshots.

use std::collections::BTreeMap;
use std::path::Path;

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::data::{load, tokenize_record, DatasetSource, ParamValue, Record, Span};
use circuit::model::Tokenizer;
use miette::{GraphicalReportHandler, GraphicalTheme};

fn render(err: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, err)
        .unwrap();
    out
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tokenizer/tokenizer.json"),
    )
    .unwrap()
}

fn one_two_three(answer: &str) -> Record {
    Record {
        prompt: "1 2 3".into(),
        slots: BTreeMap::from([
            ("S1".to_string(), Span::new(0, 1)),
            ("S2".to_string(), Span::new(2, 3)),
            ("S3".to_string(), Span::new(4, 5)),
        ]),
        answer: Some(answer.into()),
        distractor: Some(" 3".into()),
    }
}

fn label(name: &str, offset: i64) -> Position {
    Position {
        anchor: Anchor::Label {
            name: name.into(),
            token: SlotToken::Last,
        },
        offset,
    }
}

#[test]
fn rendered_errors() {
    let tokenizer = gpt2();
    let prompt = tokenize_record(&one_two_three(" 4"), &tokenizer, 12).unwrap();
    let mut rendered = String::new();
    let errors: Vec<Box<dyn miette::Diagnostic>> = vec![
        Box::new(prompt.resolve_position(&label("S4", 0)).unwrap_err()),
        Box::new(prompt.resolve_position(&label("S3", 2)).unwrap_err()),
        Box::new(
            prompt
                .resolve(&PositionSet::Items(vec![PositionItem::Range(
                    label("S2", 0),
                    label("S1", 0),
                )]))
                .unwrap_err(),
        ),
        Box::new(prompt.resolve_position(&Position::at(Anchor::Bos)).unwrap_err()),
        Box::new(tokenize_record(&one_two_three(" 4000000"), &tokenizer, 3).unwrap_err()),
        Box::new(
            load(&DatasetSource::Builtin {
                name: "seqcont.months".into(),
                params: BTreeMap::from([("len".to_string(), ParamValue::Int(12))]),
            })
            .unwrap_err(),
        ),
        Box::new(
            circuit::data::jsonl::parse(
                "{\"prompt\": \"1 2\", \"slots\": {\"S1\": [0, 5]}, \"answer\": \" 3\", \"distractor\": \" 2\"}\n",
                Path::new("digits.jsonl"),
            )
            .unwrap_err(),
        ),
    ];
    for err in errors {
        rendered.push_str(&render(err.as_ref()));
        rendered.push_str("----\n");
    }
    insta::assert_snapshot!(rendered);
}
