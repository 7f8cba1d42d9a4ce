//! Position resolution per prompt through tokenizer offsets, under the real GPT-2 tokenizer
//! (fixture) and stories260K's SentencePiece-style tokenizer (BOS, byte fallback, digits split).

use std::collections::{BTreeMap, BTreeSet};

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::data::{
    alias_notes, check_equal_lengths, check_paired_lengths, tokenize_record, tokenize_record_in,
    DataError, PromptSet, Record, Span,
};

mod data_support;
use data_support::{gpt2, stories};

/// A record whose slots are given as the substrings at byte positions computed here, never by
/// searching tokens: `slots` is (label, byte start, byte end).
fn record(prompt: &str, slots: &[(&str, usize, usize)], answer: &str, distractor: &str) -> Record {
    Record {
        prompt: prompt.to_string(),
        slots: slots
            .iter()
            .map(|(l, s, e)| (l.to_string(), Span::new(*s, *e)))
            .collect::<BTreeMap<_, _>>(),
        answer: Some(answer.to_string()),
        distractor: Some(distractor.to_string()),
    }
}

/// "1 2 3 4" style prompt with S1…Sn on the members.
fn sequence(members: &[&str], answer: &str, distractor: &str) -> Record {
    let prompt = members.join(" ");
    let mut slots = Vec::new();
    let mut at = 0;
    let labels: Vec<String> = (1..=members.len()).map(|i| format!("S{i}")).collect();
    for (i, m) in members.iter().enumerate() {
        slots.push((labels[i].as_str(), at, at + m.len()));
        at += m.len() + 1;
    }
    record(&prompt, &slots, answer, distractor)
}

fn label(name: &str) -> Position {
    Position::at(Anchor::Label {
        name: name.into(),
        token: SlotToken::Last,
    })
}

fn first(name: &str) -> Position {
    Position::at(Anchor::Label {
        name: name.into(),
        token: SlotToken::First,
    })
}

fn end() -> Position {
    Position::at(Anchor::End)
}

fn bos() -> Position {
    Position::at(Anchor::Bos)
}

fn plus(mut p: Position, offset: i64) -> Position {
    p.offset = offset;
    p
}

#[test]
fn gpt2_fixture_matches_known_ids_and_offsets() {
    let enc = gpt2().encode(" 1 2 3 4").unwrap();
    assert_eq!(enc.ids, vec![352, 362, 513, 604]);
    assert_eq!(enc.offsets, vec![(0, 2), (2, 4), (4, 6), (6, 8)]);
    assert!(!enc.has_bos);
    assert_eq!(gpt2().encode_plain("<|endoftext|>").unwrap(), vec![50256]);
}

/// The research notebook found S4 with `tokens.index(" 3")` in "1 2 3 3" and got position 2.
#[test]
fn regression_repeated_member_resolves_from_its_span() {
    let reference = sequence(&["1", "2", "3", "3"], " 5", " 4");
    let gpt2_prompt = tokenize_record(&reference, gpt2(), 0).unwrap();
    assert_eq!(gpt2_prompt.resolve_position(&label("S3")).unwrap(), 2);
    assert_eq!(gpt2_prompt.resolve_position(&label("S4")).unwrap(), 3);
    // Under stories260K: <s> ▁ 1 ▁ 2 ▁ 3 ▁ 3: the second "3" is token 8, the first token 6.
    let record_stories = Record {
        answer: Some(" 3".into()),
        distractor: Some(" 2".into()),
        ..reference
    };
    let id = circuit::data::record::prompt_id(PromptSet::Reference, 0, &record_stories);
    let tokens =
        circuit::data::tokenized::tokenize_prompt(&record_stories, stories(), &id).unwrap();
    assert_eq!(tokens.slots["S3"].last, 6);
    assert_eq!(tokens.slots["S4"].last, 8);
}

#[test]
fn gpt2_labels_end_offsets_ranges_and_all() {
    let prompt = tokenize_record(&sequence(&["1", "2", "3", "4"], " 5", " 4"), gpt2(), 0).unwrap();
    assert_eq!(prompt.ids, vec![16, 362, 513, 604]);
    assert_eq!(prompt.answer_id, Some(642));
    assert_eq!(prompt.distractor_id, Some(604));
    assert!(!prompt.has_bos);
    for (i, name) in ["S1", "S2", "S3", "S4"].iter().enumerate() {
        assert_eq!(prompt.resolve_position(&label(name)).unwrap(), i);
        assert_eq!(prompt.resolve_position(&first(name)).unwrap(), i);
    }
    assert_eq!(prompt.end(), 3);
    assert_eq!(prompt.resolve_position(&plus(label("S1"), 1)).unwrap(), 1);
    assert_eq!(prompt.resolve_position(&plus(end(), -1)).unwrap(), 2);
    let set = PositionSet::Items(vec![
        PositionItem::One(plus(label("S1"), 1)),
        PositionItem::Range(label("S3"), end()),
    ]);
    assert_eq!(prompt.resolve(&set).unwrap(), BTreeSet::from([1, 2, 3]));
    assert_eq!(
        prompt.resolve(&PositionSet::All).unwrap(),
        BTreeSet::from([0, 1, 2, 3])
    );
}

#[test]
fn gpt2_multi_token_slot_has_distinct_first_and_last_token() {
    // "Jürgen" is J|ür|gen under GPT-2; the slot covers the name only.
    let text = "When Jürgen and Mary met, Jürgen waved to";
    let second = text.rfind("Jürgen").unwrap();
    let r = record(
        text,
        &[
            ("IO", 16, 20),
            ("S1", 5, 12),
            ("S2", second, second + "Jürgen".len()),
        ],
        " Mary",
        " Jürgen",
    );
    // The distractor " Jürgen" is several tokens: that is the clear error.
    let err = tokenize_record(&r, gpt2(), 7).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, DataError::MultiTokenAnswer { .. }),
        "{message}"
    );
    assert!(message.contains("prompt 7"), "{message}");
    assert!(message.contains("distractor \" Jürgen\""), "{message}");
    assert!(message.contains("\" J\""), "{message}");

    let r = Record {
        distractor: Some(" John".into()),
        ..r
    };
    let prompt = tokenize_record(&r, gpt2(), 0).unwrap();
    let enc = gpt2().encode(text).unwrap();
    // Token 1 is " J", token 3 is "gen": the name spans tokens 1..=3.
    assert_eq!(prompt.resolve_position(&first("S1")).unwrap(), 1);
    assert_eq!(prompt.resolve_position(&label("S1")).unwrap(), 3);
    assert_eq!(enc.offsets[1], (4, 6));
    assert_eq!(&text[enc.offsets[3].0..enc.offsets[3].1], "gen");
    assert_eq!(prompt.resolve_position(&label("IO")).unwrap(), 5);
    let s2_first = prompt.resolve_position(&first("S2")).unwrap();
    let s2_last = prompt.resolve_position(&label("S2")).unwrap();
    assert_eq!(s2_last - s2_first, 2);
    assert_eq!(&text[enc.offsets[s2_last].0..enc.offsets[s2_last].1], "gen");
    assert_eq!(prompt.resolve_position(&plus(label("S1"), 1)).unwrap(), 4);
}

#[test]
fn stories260k_bos_and_byte_fallback_slots() {
    // <s> ▁ J <0xC3> <0xBC> r g en ▁ 1 2 ▁ X  (the ▁ at 1 is inserted by the tokenizer).
    let text = "Jürgen 12 X";
    let r = record(
        text,
        &[("NAME", 0, "Jürgen".len()), ("NUM", 8, 10), ("X", 11, 12)],
        "a",
        "b",
    );
    let id = circuit::data::record::prompt_id(PromptSet::Clean, 0, &r);
    let tokens = circuit::data::tokenized::tokenize_prompt(&r, stories(), &id).unwrap();
    assert!(tokens.has_bos);
    let pieces: Vec<String> = tokens
        .ids
        .iter()
        .map(|&i| stories().id_to_token(i).unwrap())
        .collect();
    assert_eq!(
        pieces,
        ["<s>", "▁", "J", "<0xC3>", "<0xBC>", "r", "g", "en", "▁", "1", "2", "▁", "X"]
    );
    assert_eq!(
        tokens.slots["NAME"].first, 2,
        "the inserted ▁ is not the name's"
    );
    assert_eq!(tokens.slots["NAME"].last, 7);
    assert_eq!(tokens.slots["NUM"].first, 9);
    assert_eq!(tokens.slots["NUM"].last, 10);
    assert_eq!(tokens.slots["X"].first, 12);

    // "a" and "b" are single pieces (▁a, ▁b) under stories260K.
    let prompt = tokenize_record_in(&r, stories(), PromptSet::Clean, 0).unwrap();
    assert_eq!(
        prompt.answer_id,
        Some(stories().encode_plain("a").unwrap()[0])
    );
    assert_eq!(prompt.resolve_position(&bos()).unwrap(), 0);
    assert_eq!(prompt.resolve_position(&plus(bos(), 1)).unwrap(), 1);
    assert_eq!(prompt.resolve_position(&end()).unwrap(), 12);
    assert_eq!(prompt.resolve_position(&label("X")).unwrap(), 12);
    assert_eq!(prompt.resolve_position(&first("NAME")).unwrap(), 2);
    assert_eq!(prompt.resolve_position(&label("NAME")).unwrap(), 7);
    let aliases = prompt.aliases(&prompt.standard_positions()).unwrap();
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].names, vec!["X", "END"]);
}

#[test]
fn stories260k_digits_split_into_tokens() {
    // "12 34": <s> ▁ 1 2 ▁ 3 4.
    let r = record("12 34", &[("S1", 0, 2), ("S2", 3, 5)], " 5", " 6");
    let id = circuit::data::record::prompt_id(PromptSet::Clean, 0, &r);
    let tokens = circuit::data::tokenized::tokenize_prompt(&r, stories(), &id).unwrap();
    assert_eq!(tokens.ids.len(), 7);
    assert_eq!((tokens.slots["S1"].first, tokens.slots["S1"].last), (2, 3));
    assert_eq!((tokens.slots["S2"].first, tokens.slots["S2"].last), (5, 6));
    // " 5" under stories260K is ▁ + 5: a clear multi-token error.
    let err = tokenize_record(&r, stories(), 0).unwrap_err();
    assert!(
        matches!(err, DataError::MultiTokenAnswer { count: 2, .. }),
        "{err}"
    );
}

#[test]
fn missing_label_names_the_prompt() {
    let prompt = tokenize_record(&sequence(&["1", "2", "3"], " 4", " 3"), gpt2(), 5).unwrap();
    let err = prompt.resolve_position(&label("S4")).unwrap_err();
    assert!(matches!(err, DataError::MissingLabel { .. }));
    let message = err.to_string();
    assert!(message.contains("prompt 5 (\"1 2 3\")"), "{message}");
    assert!(message.contains("`S4`"), "{message}");
    assert!(message.contains("S1, S2, S3"), "{message}");
}

#[test]
fn offset_outside_prompt_names_the_prompt() {
    let prompt = tokenize_record(&sequence(&["1", "2", "3"], " 4", " 3"), gpt2(), 2).unwrap();
    for p in [plus(end(), 1), plus(label("S1"), -1)] {
        let err = prompt.resolve_position(&p).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::OutsidePrompt { .. }), "{message}");
        assert!(message.contains("prompt 2 (\"1 2 3\")"), "{message}");
        assert!(message.contains(&p.display_name()), "{message}");
    }
    assert_eq!(plus(end(), 1).display_name(), "END+1");
    assert_eq!(plus(first("S1"), -1).display_name(), "first(S1)-1");
}

#[test]
fn reversed_range_is_an_error() {
    let prompt = tokenize_record(&sequence(&["1", "2", "3"], " 4", " 3"), gpt2(), 0).unwrap();
    let set = PositionSet::Items(vec![PositionItem::Range(label("S3"), label("S1"))]);
    let err = prompt.resolve(&set).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::ReversedRange {
                start: 2,
                end: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("S3..S1"));
}

#[test]
fn bos_without_bos_token_is_an_error() {
    let prompt = tokenize_record(&sequence(&["1", "2"], " 3", " 2"), gpt2(), 0).unwrap();
    let err = prompt.resolve_position(&bos()).unwrap_err();
    assert!(matches!(err, DataError::NoBos { .. }), "{err}");
}

#[test]
fn aliases_report_end_and_last_slot() {
    let clean = tokenize_record(&sequence(&["1", "2", "3", "4"], " 5", " 4"), gpt2(), 0).unwrap();
    let aliases = clean
        .aliases(&[label("S1"), label("S4"), end(), plus(label("S3"), 1)])
        .unwrap();
    assert_eq!(aliases.len(), 1);
    assert_eq!(aliases[0].token, 3);
    assert_eq!(aliases[0].names, vec!["S4", "END", "S3+1"]);
    // Across prompts: a template prompt has END on "in", not on S4.
    let templated = record("Van done in 1. Sun done in", &[("S1", 12, 13)], " 2", " 1");
    let templated = tokenize_record(&templated, gpt2(), 1).unwrap();
    let notes = alias_notes(&[clean.clone(), templated], &[label("S1"), end()]);
    assert!(notes.is_empty(), "{notes:?}");
    let notes = alias_notes(&[clean], &[label("S4"), end()]);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].prompts, vec![0]);
    assert!(notes[0].to_string().contains("S4 and END"));
}

#[test]
fn unequal_reference_length_names_both_and_the_alternative() {
    let clean = tokenize_record(&sequence(&["1", "2", "3"], " 4", " 3"), gpt2(), 0).unwrap();
    // "1000000" is two GPT-2 tokens, so this reference is one token longer.
    let long = sequence(&["1000000", "2", "3"], " 4", " 3");
    let reference = tokenize_record_in(&long, gpt2(), PromptSet::Reference, 0).unwrap();
    assert_eq!(reference.len(), 4);
    for err in [
        check_equal_lengths(
            std::slice::from_ref(&clean),
            std::slice::from_ref(&reference),
        )
        .unwrap_err(),
        check_paired_lengths(
            std::slice::from_ref(&clean),
            std::slice::from_ref(&reference),
        )
        .unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.contains("prompt 0 (\"1 2 3\") is 3 tokens"),
            "{message}"
        );
        assert!(
            message.contains("reference prompt 0 (\"1000000 2 3\") is 4 tokens"),
            "{message}"
        );
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("align by label"), "{help}");
    }
    let same = tokenize_record_in(
        &sequence(&["7", "8", "9"], " 4", " 3"),
        gpt2(),
        PromptSet::Reference,
        0,
    )
    .unwrap();
    check_equal_lengths(std::slice::from_ref(&clean), std::slice::from_ref(&same)).unwrap();
    check_paired_lengths(std::slice::from_ref(&clean), std::slice::from_ref(&same)).unwrap();
}

#[test]
fn spans_off_char_boundaries_or_outside_are_rejected() {
    let text = "Jürgen 1";
    for (span, needle) in [
        ((2, 4), "inside a character"),
        ((7, 12), "ends after"),
        ((3, 3), "empty"),
    ] {
        let r = record(text, &[("S1", span.0, span.1)], " 2", " 1");
        let err = tokenize_record(&r, gpt2(), 4).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DataError::BadSpan { .. }), "{message}");
        assert!(message.contains(needle), "{message}");
        assert!(message.contains("prompt 4"), "{message}");
    }
}
