//! Attention patterns of a circuit's kept heads: the mean over prompts, and single prompts
//! chosen with the page's prompt selector.
//!
//! Each head's pattern is drawn once per page (a `<g id="attn-L-H">` in a hidden `<defs>`, one
//! cell per causal (query, key) pair in unit coordinates, filled by the page's script from the
//! JSON block [`data_json`] writes) and every circuit's panel of the head shows it with `<use>`,
//! scaled, under its own outlines: the query rows where the circuit keeps the head and the
//! cells of its QK edges. The selector switches a pattern to one prompt by rewriting the cells'
//! `fill-opacity`, and the shared axis labels to that prompt's tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::report::svg::{escape, number, text_width, token_label, ATTENTION_COLOUR};
use crate::resolve::bound::HeadId;

/// Attention weights are written in thousandths: three decimals, the precision the page shows.
pub fn milli(weight: f32) -> u32 {
    if weight.is_finite() {
        (weight.clamp(0.0, 1.0) as f64 * 1000.0).round() as u32
    } else {
        0
    }
}

/// One prompt the selector offers.
#[derive(Clone, Debug, PartialEq)]
pub struct PatternPrompt {
    /// Index among the dataset's clean prompts.
    pub index: usize,
    pub text: String,
    /// Its tokens as text, one per position (as many as the example prompt's).
    pub tokens: Vec<String>,
}

/// The attention patterns a page shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Patterns {
    /// Token count of every prompt averaged or offered (the example prompt's).
    pub length: usize,
    /// How many prompts the mean is over, and how many the dataset has.
    pub n_mean: usize,
    pub n_prompts: usize,
    /// The prompts the selector offers, in dataset order.
    pub prompts: Vec<PatternPrompt>,
    /// Per head: the mean `(T, T)` and one `(T, T)` per offered prompt (row = query).
    pub heads: BTreeMap<HeadId, HeadPatterns>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeadPatterns {
    pub mean: Vec<Vec<f32>>,
    pub per_prompt: Vec<Vec<Vec<f32>>>,
}

/// The causal cells of a `(T, T)` pattern in thousandths, row-major (query 0 key 0, query 1
/// keys 0-1, ...): the order the cells are drawn and the script rewrites them.
fn causal_milli(pattern: &[Vec<f32>], t: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(t * (t + 1) / 2);
    for q in 0..t {
        for k in 0..=q {
            out.push(milli(
                pattern
                    .get(q)
                    .and_then(|row| row.get(k))
                    .copied()
                    .unwrap_or(0.0),
            ));
        }
    }
    out
}

/// The 64 digits of [`packed`], in order.
pub const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Thousandths (0 to 1000) as two base-64 digits each, high digit first: half the size of
/// decimal numbers in JSON.
pub fn packed(values: &[u32]) -> String {
    let mut out = String::with_capacity(2 * values.len());
    for &v in values {
        out.push(DIGITS[(v / 64) as usize % 64] as char);
        out.push(DIGITS[(v % 64) as usize] as char);
    }
    out
}

/// How many prompts the selector can offer within `budget` cell values for `heads` heads of
/// `t` tokens (at least one, when there is any prompt).
pub fn prompts_within(budget: usize, heads: usize, t: usize) -> usize {
    let per_prompt = (heads * t * (t + 1) / 2).max(1);
    (budget / per_prompt).max(1)
}

/// Panel geometry, shared by every panel of a page (one token count, one set of labels).
struct Geometry {
    t: usize,
    cell: f64,
    font: f64,
    /// Room for the token labels left of and above the grid.
    room: f64,
    /// The grid's top edge.
    top: f64,
    width: f64,
    height: f64,
}

impl Geometry {
    fn new(t: usize, labels: &[String]) -> Geometry {
        let cell = (200.0 / t.max(1) as f64).clamp(6.0, 14.0);
        let font = (cell * 0.8).min(9.0);
        let room = labels
            .iter()
            .map(|l| text_width(l, font))
            .fold(16.0, f64::max)
            + 6.0;
        let grid = cell * t as f64;
        Geometry {
            t,
            cell,
            font,
            room,
            top: 18.0 + room * 0.75,
            width: room + grid + 6.0,
            height: room * 0.75 + grid + 26.0,
        }
    }
}

fn labels(tokens: &[String]) -> Vec<String> {
    tokens.iter().map(|t| token_label(t)).collect()
}

/// The hidden SVG every panel draws from with `<use>`: per head an (empty) group the page's
/// script fills with the causal cells of the pattern shown, and the token labels of both axes
/// (the example prompt's; the script swaps them for a single prompt's). The cells are not
/// written here: for a model of GPT-2 small's size they would be most of the file, and the
/// script draws them from the JSON block in a few milliseconds.
pub fn defs(patterns: &Patterns, example_tokens: &[String]) -> String {
    let labels = labels(example_tokens);
    let g = Geometry::new(patterns.length, &labels);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg class="defs" xmlns="http://www.w3.org/2000/svg" width="0" height="0" aria-hidden="true"><defs>"#
    );
    for head in patterns.heads.keys() {
        let _ = writeln!(
            s,
            r#"<g id="attn-{}-{}" class="attn" fill="{ATTENTION_COLOUR}"></g>"#,
            head.layer, head.head
        );
    }
    let _ = write!(
        s,
        r#"<g id="attn-query-labels" font-size="{}">"#,
        number(g.font)
    );
    for (p, label) in labels.iter().enumerate().take(g.t) {
        let _ = write!(
            s,
            r#"<text class="tok q" data-i="{p}" x="{}" y="{}" text-anchor="end">{}</text>"#,
            number(g.room - 3.0),
            number(g.top + g.cell * (p as f64 + 0.5) + g.font * 0.35),
            escape(label)
        );
    }
    let _ = write!(
        s,
        "</g>\n<g id=\"attn-key-labels\" font-size=\"{}\">",
        number(g.font)
    );
    for (p, label) in labels.iter().enumerate().take(g.t) {
        let _ = write!(
            s,
            r#"<text class="tok k" data-i="{p}" transform="translate({} {}) rotate(-50)">{}</text>"#,
            number(g.room + g.cell * (p as f64 + 0.5) + g.font * 0.35),
            number(g.top - 3.0),
            escape(label)
        );
    }
    s.push_str("</g>\n</defs></svg>\n");
    s
}

/// The JSON block the page's script reads: per head, the mean's and each offered prompt's
/// causal cells in thousandths ([`packed`]); per prompt its index, text and tokens.
pub fn data_json(patterns: &Patterns) -> serde_json::Value {
    let t = patterns.length;
    let heads: serde_json::Map<String, serde_json::Value> = patterns
        .heads
        .iter()
        .map(|(h, hp)| {
            let mut series = vec![packed(&causal_milli(&hp.mean, t))];
            series.extend(hp.per_prompt.iter().map(|p| packed(&causal_milli(p, t))));
            (format!("{}-{}", h.layer, h.head), serde_json::json!(series))
        })
        .collect();
    serde_json::json!({
        "length": t,
        "prompts": patterns.prompts.iter().map(|p| serde_json::json!({
            "index": p.index,
            "text": p.text,
            "tokens": p.tokens.iter().map(|t| token_label(t)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "heads": heads,
    })
}

/// One circuit's panels: a panel per kept head, grouped by layer, each with the head's pattern,
/// tokens on both axes, its kept query rows and its QK edges' cells outlined.
pub fn panels(
    patterns: &Patterns,
    kept: &BTreeMap<HeadId, BTreeSet<usize>>,
    edges: &BTreeSet<(HeadId, usize, usize)>,
    example_tokens: &[String],
    max_panels: usize,
) -> String {
    let t = patterns.length;
    let g = Geometry::new(t, &labels(example_tokens));
    let (w, h) = (g.width, g.height);
    let mut s = String::new();
    let heads: Vec<&HeadId> = kept
        .keys()
        .filter(|h| patterns.heads.contains_key(h))
        .collect();
    let mut layer: Option<usize> = None;
    for (i, head) in heads.iter().enumerate() {
        if i == max_panels {
            let _ = writeln!(
                s,
                r#"</div><p class="note">{} more kept heads are not drawn here (at most {max_panels} panels per circuit).</p><div>"#,
                heads.len() - max_panels
            );
            break;
        }
        if layer != Some(head.layer) {
            if layer.is_some() {
                s.push_str("</div>\n");
            }
            let _ = writeln!(s, r#"<div class="alayer"><h4>layer {}</h4>"#, head.layer);
            layer = Some(head.layer);
        }
        let _ = writeln!(
            s,
            r##"<svg class="apanel" data-head="{head}" data-grid="{} {} {}" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}"><title>head {head}: attention, rows = query, columns = key; outlined rows: kept query positions, outlined cells: kept QK edges</title><text class="atitle" x="{}" y="12">head {head}</text><use href="#attn-query-labels"/><use href="#attn-key-labels"/>"##,
            number(g.room),
            number(g.top),
            number(g.cell),
            number(w),
            number(h),
            number(w),
            number(h),
            number(g.room)
        );
        let _ = write!(
            s,
            r##"<g transform="translate({} {}) scale({})"><path class="amask" d="M 1 0 H {t} V {}{} Z"/><use href="#attn-{}-{}"/>"##,
            number(g.room),
            number(g.top),
            number(g.cell),
            t.saturating_sub(1),
            (1..t)
                .rev()
                .map(|j| format!(" H {j} V {}", j - 1))
                .collect::<String>(),
            head.layer,
            head.head
        );
        for &q in &kept[head] {
            let _ = write!(
                s,
                r#"<rect class="akept" x="0" y="{q}" width="{}" height="1" vector-effect="non-scaling-stroke"/>"#,
                q + 1
            );
        }
        for &(_, k, q) in edges.iter().filter(|(h, _, _)| h == *head) {
            let _ = write!(
                s,
                r#"<rect class="aedge" x="{k}" y="{q}" width="1" height="1" vector-effect="non-scaling-stroke"/>"#
            );
        }
        let _ = writeln!(
            s,
            r#"<rect class="aframe" x="0" y="0" width="{t}" height="{t}" vector-effect="non-scaling-stroke"/></g></svg>"#
        );
    }
    if layer.is_some() {
        s.push_str("</div>\n");
    }
    s
}
