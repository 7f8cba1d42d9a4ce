//! `--html OUT`: one self-contained HTML page (inline SVG, CSS and a little JavaScript; no
//! network, no external fonts) per command, built by pure functions from data: the file's
//! report, its bound circuits, the example prompt and, when gathered, attention patterns.
//! The same input gives the same bytes.
//!
//! - [`eval_page`] (`circuit eval --html`, `circuit show`): per circuit its graph over positions
//!   ([`graph`]) and its heads' attention patterns ([`patterns`]), then the faithfulness chart
//!   (the `--svg` chart, [`crate::report::svg::faithfulness_chart`]), the settings, provenance
//!   and aliasing notes.
//! - [`diff_page`] (`circuit diff --html`): both versions of each circuit side by side, the
//!   components added, removed or moved marked, and the metric changes.
//!
//! A section whose data is absent is left out. Sections other commands compute (discovery
//! curves, node scores) come in through [`Section`]s and [`graph::GraphInput::scores`].

pub mod graph;
pub mod patterns;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use self::graph::{GraphInput, Layout, Mark};
use self::patterns::Patterns;
use super::diff::{delta, CircuitChange};
use super::svg::escape;
use super::{num, opt, quantiles_text, CircuitReport, FileReport, Style};
use crate::data::TokenizedPrompt;
use crate::resolve::bound::{BoundCircuit, HeadId, Scope, Upstream};

/// Layers and heads per layer of the model the circuits are bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub n_layers: usize,
    pub n_heads: usize,
}

/// A section another command contributes (discovery's size curve, attribution scores): a title
/// and ready markup. Empty sections are not written.
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub html: String,
}

/// Everything an evaluation page draws.
pub struct EvalPage<'a> {
    /// `eval` or `show`: written into the page (`data-kind`) and its title.
    pub kind: &'static str,
    pub report: &'a FileReport,
    /// The evaluated circuits, in report order.
    pub circuits: &'a [BoundCircuit],
    pub shape: ModelShape,
    pub scope: Scope,
    /// The prompt the graphs are drawn on (the dataset's first clean prompt), and its tokens.
    pub example: &'a TokenizedPrompt,
    pub example_tokens: &'a [String],
    pub patterns: Option<&'a Patterns>,
    pub extra: Vec<Section>,
}

/// At most this many attention panels per circuit; the rest are counted in a note.
pub const MAX_PANELS: usize = 160;

const STYLE: &str = include_str!("page.css");
/// The graph's classes: in every page, and in [`graph::standalone`].
pub const GRAPH_STYLE: &str = include_str!("graph.css");
const SCRIPT: &str = include_str!("page.js");

/// JSON placed in a `<script>` element: `<`, `>` and `&` escaped so no text can end the element.
fn script_json(value: &serde_json::Value) -> String {
    serde_json::to_string(value)
        .expect("page data serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The document around the sections.
fn document(kind: &str, title: &str, body: &str, data: Option<&serde_json::Value>) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n");
    let _ = writeln!(
        s,
        r#"<html lang="en" data-kind="{kind}" data-status="loading">"#
    );
    s.push_str("<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // No network at all: a page that fetched anything would not be self-contained.
    s.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n");
    let _ = writeln!(s, "<title>{}</title>", escape(title));
    let _ = writeln!(s, "<style>\n{STYLE}{GRAPH_STYLE}</style>");
    s.push_str("</head>\n<body>\n");
    s.push_str(body);
    if let Some(data) = data {
        let _ = writeln!(
            s,
            r#"<script type="application/json" id="page-data">{}</script>"#,
            script_json(data)
        );
    }
    let _ = writeln!(s, "<script>\n{SCRIPT}</script>");
    s.push_str("</body>\n</html>\n");
    s
}

/// An anchor id from a circuit name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn settings_table(report: &FileReport) -> String {
    let mut s = String::from("<table class=\"settings\">\n");
    for (label, value) in report.setting_rows(Style::Text) {
        let _ = writeln!(
            s,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(label),
            escape(&value)
        );
    }
    let p = &report.provenance;
    for (label, value) in [
        ("weights sha256", &p.model_sha256),
        ("tokenizer sha256", &p.tokenizer_sha256),
        ("dataset sha256", &p.dataset_sha256),
    ] {
        let _ = writeln!(
            s,
            "<tr><th>{label}</th><td><code>{}</code></td></tr>",
            escape(value)
        );
    }
    s.push_str("</table>\n");
    s
}

fn notes_list(notes: &[String]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let mut s = String::from("<ul class=\"notes\">\n");
    for n in notes {
        let _ = writeln!(s, "<li>{}</li>", escape(n));
    }
    s.push_str("</ul>\n");
    s
}

fn metrics_table(c: &CircuitReport) -> String {
    let mut s = String::from(
        "<table class=\"metrics\"><tr><th>metric</th><th>full</th><th>circuit</th><th>empty</th></tr>\n",
    );
    for (name, m) in &c.metrics {
        let _ = writeln!(
            s,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if *name == c.metric {
                " class=\"primary\""
            } else {
                ""
            },
            name,
            num(m.full),
            num(m.circuit),
            num(m.empty)
        );
    }
    s.push_str("</table>\n");
    s
}

fn summary_line(c: &CircuitReport) -> String {
    format!(
        "{} heads, {} MLPs, {} QK edges, {} path edges · faithfulness {} · ratio {}",
        c.contents.heads,
        c.contents.mlps,
        c.contents.qk_edges,
        c.contents.path_edges,
        opt(c.scores.faithfulness),
        opt(c.scores.ratio)
    )
}

const LEGEND: &str = r#"<div class="legend" aria-label="legend"><svg width="560" height="22" xmlns="http://www.w3.org/2000/svg"><g class="gn head"><circle cx="10" cy="11" r="6"/></g><text x="22" y="15">kept head at a query position</text><g class="gn mlp"><rect x="186" y="5" width="12" height="12" rx="2"/></g><text x="204" y="15">kept MLP</text><path class="gablated" d="M 270 11 h 0"/><text x="278" y="15">ablated</text><path class="ge qk" d="M 330 15 Q 345 0 360 15"/><text x="366" y="15">QK edge key → query</text><path class="ge path" d="M 490 3 C 498 8 498 14 490 19"/><text x="500" y="15">path edge</text></svg></div>
"#;

const DIFF_LEGEND: &str = r#"<div class="legend"><span class="swatch added"></span> added <span class="swatch removed"></span> removed <span class="swatch moved"></span> moved (the component is on both sides, at other positions)</div>
"#;

/// The graph of one circuit, with what it says about itself when it keeps nothing.
fn graph_block(input: &GraphInput) -> (String, Layout) {
    let layout = graph::layout(input);
    let mut s = String::new();
    if layout.is_empty() {
        let _ = writeln!(
            s,
            r#"<p class="empty" data-empty="true">Nothing is kept: <b>{}</b> is the empty circuit (every head{} ablated), so its metric is the empty circuit's.</p>"#,
            escape(&input.circuit.name),
            if input.scope == Scope::HeadsAndMlps {
                " and MLP"
            } else {
                ""
            }
        );
    } else {
        let _ = writeln!(
            s,
            r#"<div class="scroll">{}</div>"#,
            graph::draw(input, &layout)
        );
    }
    s.push_str(&notes_list(&layout.notes));
    (s, layout)
}

/// Kept query positions per head and QK cells of a laid-out circuit, for the attention panels.
type KeptHeads = BTreeMap<HeadId, BTreeSet<usize>>;
type QkCells = BTreeSet<(HeadId, usize, usize)>;

fn kept_heads(layout: &Layout) -> (KeptHeads, QkCells) {
    let mut kept: BTreeMap<HeadId, BTreeSet<usize>> = BTreeMap::new();
    for (u, p) in &layout.kept {
        if let Upstream::Head(h) = u {
            kept.entry(*h).or_default().insert(*p);
        }
    }
    let edges = layout
        .qk_arcs
        .iter()
        .flat_map(|a| a.heads.iter().map(move |h| (*h, a.key, a.query)))
        .collect();
    (kept, edges)
}

fn prompt_selector(patterns: &Patterns) -> String {
    let mut s = String::from(
        r#"<div class="selector"><label for="prompt">attention shown: </label><select id="prompt">"#,
    );
    let _ = write!(
        s,
        r#"<option value="mean">mean over {} prompts</option>"#,
        patterns.n_mean
    );
    for p in &patterns.prompts {
        let _ = write!(
            s,
            r#"<option value="{}">prompt {}: {}</option>"#,
            p.index,
            p.index,
            escape(&crate::report::svg::truncate(&p.text, 80))
        );
    }
    s.push_str("</select>");
    // On paper the selector is hidden; this says what the panels show instead.
    let _ = write!(
        s,
        r#"<span class="print-only" id="prompt-shown">mean over {} prompts</span>"#,
        patterns.n_mean
    );
    let _ = write!(
        s,
        r#" <span class="hint">the mean is over the {} of {} prompts with {} tokens (the example's count); the selector offers {} single prompt{}. Link to one with <code>#prompt=N</code>.</span></div>"#,
        patterns.n_mean,
        patterns.n_prompts,
        patterns.length,
        patterns.prompts.len(),
        if patterns.prompts.len() == 1 { "" } else { "s" }
    );
    s
}

/// `circuit eval --html` and `circuit show`: the page of a file's evaluated circuits.
pub fn eval_page(page: &EvalPage) -> String {
    let report = page.report;
    let title = format!("{} · circuit {}", report.file, page.kind);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<header><h1>{}</h1><p class=\"sub\">model {} · dataset {} ({} prompts) · metric {} at END · {} ablated by {}</p></header>",
        escape(&report.file),
        escape(&report.provenance.model),
        escape(&report.provenance.dataset),
        report.provenance.n_prompts,
        report.settings.metric,
        report.settings.scope,
        report.settings.ablation
    );
    body.push_str("<nav><b>circuits</b>");
    for c in page.circuits {
        let _ = write!(
            body,
            r##" <a href="#c-{}">{}</a>"##,
            slug(&c.name),
            escape(&c.name)
        );
    }
    body.push_str(
        r##" · <a href="#faithfulness">faithfulness</a> · <a href="#settings">settings</a>"##,
    );
    for x in page.extra.iter().filter(|x| !x.html.is_empty()) {
        let _ = write!(
            body,
            r##" · <a href="#{}">{}</a>"##,
            escape(&x.id),
            escape(&x.title)
        );
    }
    body.push_str("</nav>\n");
    let _ = writeln!(
        body,
        r#"<p class="example">Graphs are drawn on prompt {} ({} tokens): <q>{}</q></p>"#,
        page.example.index,
        page.example.len(),
        escape(&page.example.text)
    );
    if let Some(p) = page.patterns {
        body.push_str(&patterns::defs(p, page.example_tokens));
        body.push_str(&prompt_selector(p));
        body.push('\n');
    }
    body.push_str(LEGEND);
    for c in page.circuits {
        let r = report.circuits.iter().find(|r| r.name == c.name);
        let _ = writeln!(
            body,
            r#"<section class="circuit" id="c-{}" data-circuit="{}"><h2>circuit {}</h2>"#,
            slug(&c.name),
            escape(&c.name),
            escape(&c.name)
        );
        if let Some(r) = r {
            let _ = writeln!(body, "<p class=\"sub\">{}</p>", escape(&summary_line(r)));
        }
        let input = GraphInput {
            circuit: c,
            shape: page.shape,
            scope: page.scope,
            example: page.example,
            tokens: page.example_tokens,
            scores: None,
            marks: None,
        };
        let (graph_html, layout) = graph_block(&input);
        // The graph and the attention panels side by side where the window is wide enough.
        body.push_str("<div class=\"cbody\"><div class=\"cgraph\"><h3>graph over positions</h3>\n");
        body.push_str(&graph_html);
        body.push_str("</div>\n");
        if let Some(p) = page.patterns {
            let (kept, edges) = kept_heads(&layout);
            if !kept.is_empty() {
                body.push_str("<div class=\"panels\"><h3>attention of the kept heads</h3>\n");
                body.push_str(&patterns::panels(
                    p,
                    &kept,
                    &edges,
                    page.example_tokens,
                    MAX_PANELS,
                ));
                body.push_str("</div>\n");
            }
        }
        body.push_str("</div>\n");
        if let Some(r) = r {
            body.push_str("<details><summary>metrics</summary>\n");
            body.push_str(&metrics_table(r));
            if let Some(q) = &r.scores.per_prompt_faithfulness {
                let _ = writeln!(
                    body,
                    "<p>per-prompt faithfulness: {}</p>",
                    escape(&quantiles_text(q))
                );
            }
            body.push_str("</details>\n");
        }
        body.push_str("</section>\n");
    }
    body.push_str("<section id=\"faithfulness\"><h2>faithfulness</h2>\n<div class=\"scroll\">");
    let chart = super::svg::faithfulness_chart(report);
    body.push_str(chart.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"));
    body.push_str("</div></section>\n");
    body.push_str("<section id=\"settings\"><h2>settings and provenance</h2>\n");
    body.push_str(&settings_table(report));
    if !report.notes.is_empty() {
        body.push_str("<h3>aliasing notes</h3>\n");
        let notes: Vec<String> = report.notes.iter().map(|n| format!("note: {n}")).collect();
        body.push_str(&notes_list(&notes));
    }
    body.push_str("</section>\n");
    for x in page.extra.iter().filter(|x| !x.html.is_empty()) {
        let _ = writeln!(
            body,
            r#"<section id="{}"><h2>{}</h2>{}</section>"#,
            escape(&x.id),
            escape(&x.title),
            x.html
        );
    }
    let data = page.patterns.map(patterns::data_json);
    document(page.kind, &title, &body, data.as_ref())
}

/// One side of a diff: a version's circuits on its own example prompt, with its results when
/// evaluated.
pub struct DiffSide<'a> {
    pub name: &'a str,
    pub circuits: &'a [BoundCircuit],
    pub reports: &'a [CircuitReport],
    pub shape: ModelShape,
    pub scope: Scope,
    pub example: &'a TokenizedPrompt,
    pub example_tokens: &'a [String],
}

/// Everything a diff page draws.
pub struct DiffPage<'a> {
    pub a: DiffSide<'a>,
    pub b: DiffSide<'a>,
    pub settings: &'a [(String, String, String)],
    pub changes: &'a [CircuitChange],
}

impl<'a> DiffSide<'a> {
    /// The graph input of one of this side's circuits.
    fn graph_input(
        &self,
        circuit: &'a BoundCircuit,
        marks: Option<&'a BTreeMap<(Upstream, usize), Mark>>,
    ) -> GraphInput<'a> {
        GraphInput {
            circuit,
            shape: self.shape,
            scope: self.scope,
            example: self.example,
            tokens: self.example_tokens,
            scores: None,
            marks,
        }
    }
}

/// Marks of one side: what it has that the other lacks (`mark`), and components on both sides
/// at other positions (moved).
fn marks(
    own: &BTreeSet<(Upstream, usize)>,
    other: &BTreeSet<(Upstream, usize)>,
    mark: Mark,
) -> BTreeMap<(Upstream, usize), Mark> {
    let components = |s: &BTreeSet<(Upstream, usize)>| -> BTreeSet<Upstream> {
        s.iter().map(|(u, _)| *u).collect()
    };
    let other_components = components(other);
    own.difference(other)
        .map(|&(u, p)| {
            let m = if other_components.contains(&u) {
                Mark::Moved
            } else {
                mark
            };
            ((u, p), m)
        })
        .collect()
}

/// `circuit diff --html`.
pub fn diff_page<'a>(page: &DiffPage<'a>) -> String {
    let title = format!("{} → {} · circuit diff", page.a.name, page.b.name);
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<header><h1>diff</h1><p class=\"sub\"><span class=\"old\">− {}</span> · <span class=\"new\">+ {}</span></p></header>",
        escape(page.a.name),
        escape(page.b.name)
    );
    if page.settings.is_empty() {
        body.push_str("<p>Settings: unchanged.</p>\n");
    } else {
        body.push_str(
            "<table class=\"settings\"><tr><th>setting</th><th>before</th><th>after</th></tr>\n",
        );
        for (name, x, y) in page.settings {
            let _ = writeln!(
                body,
                "<tr><th>{}</th><td>{}</td><td>{}</td></tr>",
                escape(name),
                escape(x),
                escape(y)
            );
        }
        body.push_str("</table>\n");
    }
    body.push_str(DIFF_LEGEND);
    for change in page.changes {
        let ca = page.a.circuits.iter().find(|c| c.name == change.name);
        let cb = page.b.circuits.iter().find(|c| c.name == change.name);
        let _ = writeln!(
            body,
            r#"<section class="circuit diff" id="c-{}" data-circuit="{}" data-status="{}"><h2>circuit {} <span class="status {}">{}</span></h2>"#,
            slug(&change.name),
            escape(&change.name),
            change.status,
            escape(&change.name),
            change.status,
            change.status
        );
        let ra = page.a.reports.iter().find(|r| r.name == change.name);
        let rb = page.b.reports.iter().find(|r| r.name == change.name);
        if ra.is_some() || rb.is_some() {
            let metric = rb.or(ra).map(|r| r.metric).unwrap_or("metric");
            let _ = writeln!(
                body,
                "<table class=\"metrics\"><tr><th>faithfulness</th><td>{}</td></tr><tr><th>ratio</th><td>{}</td></tr><tr><th>{metric}</th><td>{}</td></tr></table>",
                delta(ra.and_then(|r| r.scores.faithfulness), rb.and_then(|r| r.scores.faithfulness)),
                delta(ra.and_then(|r| r.scores.ratio), rb.and_then(|r| r.scores.ratio)),
                delta(ra.map(|r| r.scores.circuit), rb.map(|r| r.scores.circuit)),
            );
        }
        if !change.removed.is_empty() || !change.added.is_empty() {
            body.push_str("<ul class=\"changes\">\n");
            for line in &change.removed {
                let _ = writeln!(body, "<li class=\"removed\">− {}</li>", escape(line));
            }
            for line in &change.added {
                let _ = writeln!(body, "<li class=\"added\">+ {}</li>", escape(line));
            }
            body.push_str("</ul>\n");
        }
        let kept = |side: &DiffSide<'a>, c: Option<&'a BoundCircuit>| {
            c.map(|c| graph::layout(&side.graph_input(c, None)).kept)
                .unwrap_or_default()
        };
        let (kept_a, kept_b) = (kept(&page.a, ca), kept(&page.b, cb));
        let marks_a = marks(&kept_a, &kept_b, Mark::Removed);
        let marks_b = marks(&kept_b, &kept_a, Mark::Added);
        body.push_str("<div class=\"sides\">\n");
        for (side, circuit, side_marks, class) in [
            (&page.a, ca, &marks_a, "old"),
            (&page.b, cb, &marks_b, "new"),
        ] {
            let _ = writeln!(
                body,
                r#"<div class="side {class}"><h3>{} {}</h3>"#,
                if class == "old" { "−" } else { "+" },
                escape(side.name)
            );
            match circuit {
                Some(c) => body.push_str(&graph_block(&side.graph_input(c, Some(side_marks))).0),
                None => body.push_str("<p class=\"empty\">not in this version</p>\n"),
            }
            body.push_str("</div>\n");
        }
        body.push_str("</div></section>\n");
    }
    document("diff", &title, &body, None)
}
