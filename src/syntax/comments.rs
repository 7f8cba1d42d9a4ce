//! Comments: found by a small scanner (the grammar skips them), then attached to the statements
//! around them so that the formatter can put each one back.
//!
//! Attachment rules, applied per container (the file, or a circuit's body):
//! - a comment after code on the same line is the *trailing* comment of the statement that
//!   ends on that line;
//! - a comment on its own line is a *leading* comment of the next statement, or an end
//!   comment of the container when no statement follows;
//! - a comment inside a multi-line statement becomes one of its leading comments (the
//!   formatter prints every statement on one line).

use super::ast::{Comment, File, ItemKind, Span, Statement, Trivia};
use super::diagnostic::SourceDiagnostic;

/// Every comment in `text`, in order. Strings (which cannot span lines) are skipped.
pub fn scan(text: &str) -> Vec<Comment> {
    let bytes = text.as_bytes();
    let mut comments = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += 1;
                }
                i += 1;
            }
            b'#' => {
                let start = i;
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                let raw = &text[start..i];
                comments.push(Comment {
                    text: raw.trim_end().to_string(),
                    span: start..i,
                });
            }
            _ => i += 1,
        }
    }
    comments
}

/// Rejects parentheses nested deeper than `max` before parsing, so that neither pest nor the
/// tree walkers recurse without bound on hostile input.
pub fn check_nesting(text: &str, max: usize) -> Option<SourceDiagnostic> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' => {
                depth += 1;
                if depth > max {
                    return Some(
                        SourceDiagnostic::error(
                            "circuit::parse::too_complex",
                            format!("parentheses are nested more than {max} deep"),
                        )
                        .with_label(i..i + 1, "too deep"),
                    );
                }
            }
            b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The end of `start..end` with trailing whitespace and comments removed.
pub fn trim_end(text: &str, start: usize, end: usize) -> usize {
    let mut end = end;
    loop {
        let trimmed = start + text[start..end].trim_end().len();
        // If the last line of the span (after trimming) is a comment, cut it.
        let line_start = text[start..trimmed]
            .rfind('\n')
            .map(|i| start + i + 1)
            .unwrap_or(start);
        let line = &text[line_start..trimmed];
        match comment_start_in_line(line) {
            Some(i) if line_start + i > start => {
                end = line_start + i;
            }
            _ => return trimmed,
        }
    }
}

/// Where a `#` outside a string starts a comment in one line.
fn comment_start_in_line(line: &str) -> Option<usize> {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return Some(i),
            _ => {}
        }
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Whether `text[a..b]` contains a line holding only whitespace (a blank line). The first and
/// last partial lines of the range do not count.
fn has_blank_line(text: &str, a: usize, b: usize) -> bool {
    if a >= b {
        return false;
    }
    let region = &text[a..b];
    let lines: Vec<&str> = region.split('\n').collect();
    lines.len() > 2
        && lines[1..lines.len() - 1]
            .iter()
            .any(|l| l.trim().is_empty())
}

/// A statement-like node in a container: its span and its trivia.
struct Slot<'a> {
    span: Span,
    trivia: &'a mut Trivia,
}

/// Distributes `comments` (all inside `container`) over `slots`; returns the end comments.
fn distribute(text: &str, slots: &mut [Slot], comments: Vec<Comment>) -> Vec<Comment> {
    let mut end_comments = Vec::new();
    for comment in comments {
        let c = comment.span.start;
        let line_start = text[..c].rfind('\n').map(|i| i + 1).unwrap_or(0);
        let after_code = !text[line_start..c].trim().is_empty();
        if let Some(slot) = slots
            .iter_mut()
            .find(|s| s.span.start <= c && c < s.span.end)
        {
            slot.trivia.leading.push(comment);
            continue;
        }
        if after_code {
            let line = line_of(text, c);
            let owner = slots.iter_mut().rev().find(|s| {
                s.span.end <= c && s.span.end > 0 && line_of(text, s.span.end - 1) == line
            });
            if let Some(slot) = owner {
                if slot.trivia.trailing.is_none() {
                    slot.trivia.trailing = Some(comment);
                    continue;
                }
            }
        }
        match slots.iter_mut().find(|s| s.span.start > c) {
            Some(slot) => slot.trivia.leading.push(comment),
            None => end_comments.push(comment),
        }
    }
    end_comments
}

/// Blank-line flags for each slot (the first slot never gets one).
fn mark_blank_lines(text: &str, slots: &mut [Slot], container_start: usize) {
    let mut prev_end = container_start;
    for (i, slot) in slots.iter_mut().enumerate() {
        let first = slot
            .trivia
            .leading
            .first()
            .map(|c| c.span.start.min(slot.span.start))
            .unwrap_or(slot.span.start);
        slot.trivia.blank_before = i > 0 && has_blank_line(text, prev_end, first);
        prev_end = slot
            .trivia
            .trailing
            .as_ref()
            .map(|c| c.span.end)
            .unwrap_or(slot.span.end);
    }
}

/// Attaches every comment of `text` to `file` and records blank lines.
pub fn attach(file: &mut File, comments: Vec<Comment>, text: &str) {
    // Split comments: those inside a circuit's braces go to that circuit.
    let mut top = Vec::new();
    let mut per_circuit: Vec<Vec<Comment>> = vec![Vec::new(); file.items.len()];
    let bodies: Vec<Option<(usize, usize)>> = file
        .items
        .iter()
        .map(|item| match &item.kind {
            ItemKind::Circuit(_) => {
                let open = item.span.start + brace_offset(&text[item.span.clone()]);
                Some((open + 1, item.span.end - 1))
            }
            _ => None,
        })
        .collect();
    for comment in comments {
        let c = comment.span.start;
        match bodies
            .iter()
            .position(|b| matches!(b, Some((lo, hi)) if *lo <= c && c < *hi))
        {
            Some(i) => per_circuit[i].push(comment),
            None => top.push(comment),
        }
    }

    let last_item_end = file.items.last().map(|i| i.span.end);
    {
        let mut slots: Vec<Slot> = file
            .items
            .iter_mut()
            .map(|item| Slot {
                span: item.span.clone(),
                trivia: &mut item.trivia,
            })
            .collect();
        file.end_comments = distribute(text, &mut slots, top);
        mark_blank_lines(text, &mut slots, 0);
    }
    if let (Some(first), Some(end)) = (file.end_comments.first(), last_item_end) {
        file.blank_before_end = has_blank_line(text, end, first.span.start);
    }
    // Canonical layout: a circuit is always separated from its neighbours by a blank line.
    for i in 1..file.items.len() {
        let around_circuit = matches!(file.items[i].kind, ItemKind::Circuit(_))
            || matches!(file.items[i - 1].kind, ItemKind::Circuit(_));
        if around_circuit {
            file.items[i].trivia.blank_before = true;
        }
    }
    if !file.end_comments.is_empty()
        && matches!(
            file.items.last().map(|i| &i.kind),
            Some(ItemKind::Circuit(_))
        )
    {
        file.blank_before_end = true;
    }

    for (i, item) in file.items.iter_mut().enumerate() {
        let ItemKind::Circuit(circuit) = &mut item.kind else {
            continue;
        };
        let (body_start, _) = bodies[i].expect("circuits have bodies");
        let mut comments = std::mem::take(&mut per_circuit[i]);
        // A comment on the line of `{`, before any statement, belongs to the header.
        if let Some(first) = comments.first() {
            let same_line = line_of(text, first.span.start) == line_of(text, body_start - 1);
            let before_statements = circuit
                .body
                .first()
                .is_none_or(|s| s.span.start > first.span.start);
            if same_line && before_statements {
                circuit.open_comment = Some(comments.remove(0));
            }
        }
        let container_start = circuit
            .open_comment
            .as_ref()
            .map(|c| c.span.end)
            .unwrap_or(body_start);
        let last_end = circuit.body.last().map(|s: &Statement| {
            s.trivia
                .trailing
                .as_ref()
                .map(|c| c.span.end)
                .unwrap_or(s.span.end)
        });
        let mut slots: Vec<Slot> = circuit
            .body
            .iter_mut()
            .map(|s| Slot {
                span: s.span.clone(),
                trivia: &mut s.trivia,
            })
            .collect();
        circuit.end_comments = distribute(text, &mut slots, comments);
        mark_blank_lines(text, &mut slots, container_start);
        drop(slots);
        if let Some(first) = circuit.end_comments.first() {
            let last_end = circuit
                .body
                .last()
                .map(|s| {
                    s.trivia
                        .trailing
                        .as_ref()
                        .map(|c| c.span.end)
                        .unwrap_or(s.span.end)
                })
                .or(last_end);
            circuit.blank_before_end = match last_end {
                Some(end) => has_blank_line(text, end, first.span.start),
                None => false,
            };
        }
    }
}

/// Offset of the circuit's `{` within its text (outside comments; names cannot hold `{`).
fn brace_offset(circuit_text: &str) -> usize {
    let mut in_comment = false;
    for (i, c) in circuit_text.char_indices() {
        match c {
            '#' => in_comment = true,
            '\n' => in_comment = false,
            '{' if !in_comment => return i,
            _ => {}
        }
    }
    0
}
