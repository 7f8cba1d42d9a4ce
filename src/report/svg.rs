//! Pictures of results as standalone SVG 1.1 documents, generated as strings.
//!
//! The helper layer ([`escape`], [`number`], [`nice_ticks`], [`tick_label`], [`Svg`]) is shared
//! by every chart; [`faithfulness_chart`] draws `circuit eval --svg`, [`attention_chart`] draws
//! `circuit run --attention L.H --svg`. Output is deterministic:
//! the same report gives the same bytes (coordinates are rounded to two decimals, text widths
//! are estimated from character counts rather than measured by a font engine).

use std::fmt::Write as _;

use super::{num, quantiles_text, FileReport};
use crate::measure::Quantiles;

/// Escapes text for SVG character data and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A coordinate or size: at most two decimals, no trailing zeros, never `-0`.
pub fn number(x: f64) -> String {
    let rounded = (x * 100.0).round() / 100.0;
    let text = format!("{rounded:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// Evenly spaced "nice" ticks (steps of 1, 2 or 5 × 10ᵏ) from at or below `lo` to at or above
/// `hi`, about `target` of them. Returns the ticks and the step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = if hi - lo > 0.0 { hi - lo } else { 1.0 };
    let raw = span / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).floor() as i64;
    let last = (hi / step).ceil() as i64;
    // Ticks are computed from integers times the step, so 0.1 + 0.2 drift never accumulates.
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    (ticks, step)
}

/// A tick's label with as many decimals as the step needs (`0.25` for step 0.05, `2` for 1).
pub fn tick_label(value: f64, step: f64) -> String {
    // The fewest decimals that write the step exactly (0.2 → 1, 0.25 → 2, 5 → 0).
    let decimals = (0..=6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize;
    let text = format!("{value:.decimals$}");
    // `-0` and `-0.0` read as noise on an axis.
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        text.trim_start_matches('-').to_string()
    } else {
        text
    }
}

/// An estimate of a text's width in pixels at `font_size` for a sans-serif font: SVG has no
/// text measurement, so layout uses an average advance of 0.56 em per character.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars().count() as f64 * font_size * 0.56
}

/// Shortens `text` to at most `max_chars` characters, ending in `…` when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// An SVG document under construction: elements are appended as text, [`Svg::finish`] wraps
/// them in the root element with its size and view box.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

/// How a text is anchored at its `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

impl Svg {
    /// An empty document of `width` × `height` pixels.
    pub fn new(width: f64, height: f64) -> Svg {
        Svg {
            width,
            height,
            body: String::new(),
        }
    }

    /// Appends raw markup (already escaped).
    pub fn raw(&mut self, markup: &str) {
        self.body.push_str(markup);
        self.body.push('\n');
    }

    /// A rectangle; `extra` holds further attributes (already escaped), e.g. `fill="#fff"`.
    pub fn rect(&mut self, class: &str, x: f64, y: f64, width: f64, height: f64, extra: &str) {
        let _ = writeln!(
            self.body,
            r#"<rect class="{class}" x="{}" y="{}" width="{}" height="{}" {extra}/>"#,
            number(x),
            number(y),
            number(width),
            number(height)
        );
    }

    /// A line from `(x1, y1)` to `(x2, y2)`.
    pub fn line(&mut self, class: &str, x1: f64, y1: f64, x2: f64, y2: f64) {
        let _ = writeln!(
            self.body,
            r#"<line class="{class}" x1="{}" y1="{}" x2="{}" y2="{}"/>"#,
            number(x1),
            number(y1),
            number(x2),
            number(y2)
        );
    }

    /// A text element; `content` is escaped here.
    pub fn text(&mut self, class: &str, x: f64, y: f64, anchor: Anchor, content: &str) {
        let _ = writeln!(
            self.body,
            r#"<text class="{class}" x="{}" y="{}" text-anchor="{}">{}</text>"#,
            number(x),
            number(y),
            anchor.as_str(),
            escape(content)
        );
    }

    /// The whole document: XML declaration, root `svg` with the SVG namespace, `style` (CSS
    /// classes shared by the elements), a white background, then the elements in order.
    pub fn finish(self, title: &str, style: &str) -> String {
        let (w, h) = (number(self.width), number(self.height));
        let mut out = String::new();
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#
        );
        let _ = writeln!(out, "<title>{}</title>", escape(title));
        let _ = writeln!(
            out,
            "<style type=\"text/css\"><![CDATA[\n{style}]]></style>"
        );
        let _ = writeln!(
            out,
            r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>"##
        );
        out.push_str(&self.body);
        out.push_str("</svg>\n");
        out
    }
}

/// A linear map from data values to pixels along one axis.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub pixel_lo: f64,
    pub pixel_hi: f64,
}

impl Scale {
    /// The pixel of `value`.
    pub fn at(&self, value: f64) -> f64 {
        self.pixel_lo + (value - self.lo) / (self.hi - self.lo) * (self.pixel_hi - self.pixel_lo)
    }
}

const FONT: &str = "'DejaVu Sans', 'Helvetica Neue', Helvetica, Arial, sans-serif";

const CHART_STYLE: &str = "text { font-family: FONT; fill: #222222; }
.title { font-size: 16px; font-weight: bold; }
.subtitle { font-size: 11px; fill: #555555; }
.name { font-size: 12px; }
.value { font-size: 11px; font-weight: bold; }
.undefined { font-size: 11px; font-style: italic; fill: #777777; }
.tick-label { font-size: 10px; fill: #555555; }
.axis-title { font-size: 11px; fill: #333333; }
.ref-label { font-size: 10px; fill: #333333; }
.legend { font-size: 10px; fill: #555555; }
.grid { stroke: #e6e6e6; stroke-width: 1; }
.tick { stroke: #888888; stroke-width: 1; }
.axis { stroke: #888888; stroke-width: 1; }
.ref { stroke: #333333; stroke-width: 1.2; stroke-dasharray: 4 3; }
.bar { fill: #4c78a8; }
.bar.negative { fill: #e45756; }
.whisker { stroke: #333333; stroke-width: 1.2; }
.cut { fill: none; }
.box { fill: #ffffff; stroke: #333333; stroke-width: 1.2; }
.median { stroke: #333333; stroke-width: 2; }
.label-backing { fill: #ffffff; fill-opacity: 0.85; }
";

// Layout of the faithfulness chart, in pixels.
const MARGIN: f64 = 20.0;
const ROW_HEIGHT: f64 = 44.0;
const BAR_HEIGHT: f64 = 16.0;
const BOX_HEIGHT: f64 = 8.0;
const PLOT_WIDTH: f64 = 480.0;
/// Room right of the plot for a value label at the axis end.
const VALUE_ROOM: f64 = 90.0;
/// Circuit names longer than this are cut (the full name stays in the bar's tooltip).
const MAX_NAME_CHARS: usize = 40;

/// The lowest and highest value the axis shows. It always holds 0 (empty circuit), 1 (full
/// model), every faithfulness and every per-prompt quartile and median. The min/max whiskers
/// widen it by at most that span again on each side: a prompt on which the full model and the
/// empty circuit nearly agree can have a per-prompt faithfulness of ±10⁶, and it must not
/// squash every bar into a pixel. Whiskers beyond the axis are cut at its end and marked.
fn value_range(report: &FileReport) -> (f64, f64) {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let (mut whisker_lo, mut whisker_hi) = (0.0f64, 1.0f64);
    for c in &report.circuits {
        let s = &c.scores;
        let mut core: Vec<f64> = s.faithfulness.into_iter().collect();
        if let Some(q) = &s.per_prompt_faithfulness {
            core.extend([q.q25, q.median, q.q75]);
            for v in [q.min, q.max].into_iter().filter(|v| v.is_finite()) {
                whisker_lo = whisker_lo.min(v);
                whisker_hi = whisker_hi.max(v);
            }
        }
        for v in core.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    let span = hi - lo;
    (
        whisker_lo.max(lo - span).min(lo),
        whisker_hi.min(hi + span).max(hi),
    )
}

/// The title block both charts open with: a title and a line per subtitle, from the top-left
/// margin.
struct Header {
    title: String,
    subtitles: Vec<String>,
}

impl Header {
    /// The widest line of the block.
    fn width(&self) -> f64 {
        (self.subtitles.iter())
            .map(|t| text_width(t, 11.0))
            .fold(text_width(&self.title, 16.0), f64::max)
    }

    /// Where the block ends.
    fn bottom(&self) -> f64 {
        MARGIN + 16.0 + 16.0 * self.subtitles.len() as f64
    }

    fn draw(&self, svg: &mut Svg) {
        svg.text("title", MARGIN, MARGIN + 12.0, Anchor::Start, &self.title);
        for (i, line) in self.subtitles.iter().enumerate() {
            let y = MARGIN + 32.0 + 16.0 * i as f64;
            svg.text("subtitle", MARGIN, y, Anchor::Start, line);
        }
    }
}

/// `circuit eval --svg`: one horizontal bar per circuit (in report order) whose length is its
/// faithfulness, with the per-prompt faithfulness below it as a box plot (box: quartiles,
/// whiskers: min and max, thick tick: median), reference lines at 0 (empty circuit) and 1 (full
/// model), and the file's settings in the title block.
pub fn faithfulness_chart(report: &FileReport) -> String {
    let p = &report.provenance;
    let s = &report.settings;
    let header = Header {
        title: format!("Faithfulness of {}", report.file),
        subtitles: vec![
            format!(
                "model {} · dataset {} ({} prompts)",
                p.model, p.dataset, p.n_prompts
            ),
            format!(
                "metric {} at END · {} ablated by {}, edges by {}, aligned by {}",
                s.metric, s.scope, s.ablation, s.edge_ablation, s.alignment
            ),
            format!("reference {}", s.reference),
        ],
    };

    let prompts = report
        .circuits
        .iter()
        .filter_map(|c| c.scores.per_prompt_faithfulness.as_ref())
        .map(|q| q.n_prompts)
        .max()
        .unwrap_or(0);
    let (lo, hi) = value_range(report);
    let (ticks, step) = nice_ticks(lo, hi, 6);
    let (axis_lo, axis_hi) = (ticks[0], ticks[ticks.len() - 1]);
    let any_cut = (report.circuits.iter())
        .filter_map(|c| c.scores.per_prompt_faithfulness.as_ref())
        .any(|q| q.min < axis_lo || q.max > axis_hi);
    let legend = [
        "Bar: faithfulness of the prompt means (the report's number).".to_string(),
        format!(
            "Below it: faithfulness per prompt (n = {prompts}): box = quartiles, whiskers = min to max, thick tick = median.{}",
            if any_cut { " A whisker ending in > runs on past the axis." } else { "" }
        ),
    ];
    let names: Vec<String> = report
        .circuits
        .iter()
        .map(|c| truncate(&c.name, MAX_NAME_CHARS))
        .collect();
    let name_width = names
        .iter()
        .map(|n| text_width(n, 12.0))
        .fold(60.0, f64::max);
    let plot_left = MARGIN + name_width + 12.0;
    let plot_right = plot_left + PLOT_WIDTH;
    let header_width = (legend.iter())
        .map(|t| text_width(t, 10.0))
        .fold(header.width(), f64::max);
    let width = (plot_right + VALUE_ROOM).max(MARGIN + header_width + MARGIN);

    let scale = Scale {
        lo: axis_lo,
        hi: axis_hi,
        pixel_lo: plot_left,
        pixel_hi: plot_right,
    };

    // Room above the rows for the reference-line labels.
    let plot_top = header.bottom() + 30.0;
    let plot_bottom = plot_top + ROW_HEIGHT * report.circuits.len().max(1) as f64;
    let legend_y = plot_bottom + 56.0;
    let height = legend_y + 14.0 + MARGIN;

    let mut svg = Svg::new(width, height);
    header.draw(&mut svg);

    // Grid and ticks under everything else.
    for &t in &ticks {
        let x = scale.at(t);
        svg.line("grid", x, plot_top, x, plot_bottom);
        svg.line("tick", x, plot_bottom, x, plot_bottom + 4.0);
        svg.text(
            "tick-label",
            x,
            plot_bottom + 16.0,
            Anchor::Middle,
            &tick_label(t, step),
        );
    }
    svg.line("axis", plot_left, plot_bottom, plot_right, plot_bottom);
    svg.text(
        "axis-title",
        (plot_left + plot_right) / 2.0,
        plot_bottom + 34.0,
        Anchor::Middle,
        &format!(
            "faithfulness of {}: (m(C) − m(empty)) / (m(full) − m(empty))",
            s.metric
        ),
    );
    // The labels point away from each other, so they never overlap however close 0 and 1 are.
    for (value, label, anchor, nudge) in [
        (0.0, "empty circuit (0)", Anchor::End, 3.0),
        (1.0, "full model (1)", Anchor::Start, -3.0),
    ] {
        let x = scale.at(value);
        svg.line("ref", x, plot_top - 6.0, x, plot_bottom);
        svg.text("ref-label", x + nudge, plot_top - 10.0, anchor, label);
    }

    let zero = scale.at(0.0);
    for (i, (c, name)) in report.circuits.iter().zip(&names).enumerate() {
        let row_top = plot_top + ROW_HEIGHT * i as f64;
        let bar_top = row_top + 6.0;
        let bar_mid = bar_top + BAR_HEIGHT / 2.0;
        svg.text("name", plot_left - 12.0, bar_mid + 4.0, Anchor::End, name);
        match c.scores.faithfulness.filter(|f| f.is_finite()) {
            Some(f) => {
                let end = scale.at(f);
                let (x, w) = (zero.min(end), (end - zero).abs());
                let class = if f < 0.0 { "bar negative" } else { "bar" };
                svg.raw(&format!(
                    r#"<g><title>{}: faithfulness {}</title>"#,
                    escape(&c.name),
                    num(f)
                ));
                svg.rect(class, x, bar_top, w, BAR_HEIGHT, "");
                svg.raw("</g>");
                let (label_x, anchor) = if f < 0.0 {
                    (end - 4.0, Anchor::End)
                } else {
                    (end + 4.0, Anchor::Start)
                };
                // A white backing keeps the label readable where a reference line crosses it.
                let label = num(f);
                let label_width = text_width(&label, 11.0);
                let backing_x = match anchor {
                    Anchor::End => label_x - label_width,
                    _ => label_x,
                };
                svg.rect(
                    "label-backing",
                    backing_x - 1.0,
                    bar_mid - 6.0,
                    label_width + 2.0,
                    12.0,
                    "",
                );
                svg.text("value", label_x, bar_mid + 4.0, anchor, &label);
            }
            None => svg.text(
                "undefined",
                zero + 4.0,
                bar_mid + 4.0,
                Anchor::Start,
                "undefined (full model and empty circuit agree)",
            ),
        }
        let drawable = |q: &&Quantiles| {
            [q.min, q.q25, q.median, q.q75, q.max]
                .iter()
                .all(|v| !v.is_nan())
        };
        if let Some(q) = c.scores.per_prompt_faithfulness.as_ref().filter(drawable) {
            let mid = bar_top + BAR_HEIGHT + 10.0;
            // Positions on the axis, cut at its ends (see `value_range`).
            let at = |v: f64| scale.at(v).clamp(plot_left, plot_right);
            let (x_min, x_max) = (at(q.min), at(q.max));
            let (x_q25, x_q75) = (at(q.q25), at(q.q75));
            let half = BOX_HEIGHT / 2.0;
            svg.raw(&format!(
                "<g><title>{}: per-prompt faithfulness {}</title>",
                escape(&c.name),
                escape(&quantiles_text(q))
            ));
            svg.line("whisker", x_min, mid, x_max, mid);
            // A whisker end inside the axis gets a cap; one cut at the axis end a chevron
            // pointing on.
            for (x, outward) in [(x_min, -1.0), (x_max, 1.0)] {
                if x > plot_left && x < plot_right {
                    svg.line("whisker", x, mid - half, x, mid + half);
                } else {
                    let back = x - outward * half;
                    svg.raw(&format!(
                        r#"<polyline class="whisker cut" points="{},{} {},{} {},{}"/>"#,
                        number(back),
                        number(mid - half),
                        number(x),
                        number(mid),
                        number(back),
                        number(mid + half)
                    ));
                }
            }
            svg.rect("box", x_q25, mid - half, x_q75 - x_q25, BOX_HEIGHT, "");
            let x_median = at(q.median);
            svg.line("median", x_median, mid - half, x_median, mid + half);
            svg.raw("</g>");
        }
    }

    for (i, line) in legend.iter().enumerate() {
        svg.text(
            "legend",
            MARGIN,
            legend_y + 14.0 * i as f64,
            Anchor::Start,
            line,
        );
    }
    svg.finish(&header.title, &CHART_STYLE.replace("FONT", FONT))
}

/// One head's attention pattern for [`attention_chart`].
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionPanel {
    pub layer: usize,
    pub head: usize,
    /// `(T, T)`: row = query position, column = key position; rows sum to 1 over the keys at
    /// or before the query (the causal mask), later keys are 0.
    pub pattern: Vec<Vec<f32>>,
}

const HEATMAP_STYLE: &str = "text { font-family: FONT; fill: #222222; }
.title { font-size: 16px; font-weight: bold; }
.subtitle { font-size: 11px; fill: #555555; }
.panel-title { font-size: 13px; font-weight: bold; }
.token { font-size: TOKEN_SIZEpx; }
.axis-title { font-size: 11px; fill: #333333; }
.tick-label { font-size: 10px; fill: #555555; }
.cell { fill: #08519c; }
.masked { fill: #f2f2f2; }
.frame { fill: none; stroke: #888888; stroke-width: 1; }
.tick { stroke: #888888; stroke-width: 1; }
";

/// The colour every attention cell is drawn in; its `fill-opacity` is the attention weight, so
/// on white the cell goes from white (0) to this colour (1).
pub const ATTENTION_COLOUR: &str = "#08519c";

/// Cell opacity as written: the weight clamped to [0, 1], four decimals.
pub fn opacity(weight: f32) -> String {
    let w = if weight.is_finite() {
        weight.clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!("{w:.4}")
}

/// How a token is shown on an axis: spaces as `␣`, line breaks as `↵`, at most 12 characters.
pub fn token_label(text: &str) -> String {
    let shown: String = text
        .chars()
        .map(|c| match c {
            ' ' | '\u{2581}' => '\u{2423}',
            '\n' => '\u{21B5}',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect();
    truncate(&shown, 12)
}

/// `circuit run --attention L.H --svg`: one heatmap panel per head, side by side, of the
/// pattern on one prompt (rows: query tokens, columns: key tokens, above the diagonal greyed
/// out by the causal mask), with a shared 0–1 colour legend. `tokens` are the prompt's tokens
/// as text, one per position.
pub fn attention_chart(
    model: &str,
    prompt: &str,
    tokens: &[String],
    panels: &[AttentionPanel],
) -> String {
    let n = tokens.len();
    let labels: Vec<String> = tokens.iter().map(|t| token_label(t)).collect();
    // Big enough to read, small enough that a 64-token prompt stays on a screen.
    let cell = (360.0 / n.max(1) as f64).clamp(8.0, 26.0);
    // Token labels shrink with the cells so that neighbours do not overlap on long prompts.
    let token_size = (cell * 0.85).min(10.0);
    let label_room = labels
        .iter()
        .map(|l| text_width(l, token_size))
        .fold(24.0, f64::max)
        + 10.0;
    let grid = cell * n as f64;
    // Key labels are written at -60°: their height is about the label width × sin 60°.
    let top_labels = label_room * 0.87 + 6.0;
    let panel_width = label_room + grid + 30.0;

    let header = Header {
        title: format!(
            "Attention pattern{} of {}",
            if panels.len() == 1 { "" } else { "s" },
            panels
                .iter()
                .map(|p| format!("head {}.{}", p.layer, p.head))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        subtitles: vec![
            format!("model {model} · {n} tokens"),
            format!("prompt {prompt:?}"),
            "rows: query position, columns: key position; cell colour: attention weight"
                .to_string(),
        ],
    };
    let header_bottom = header.bottom();
    let panels_left = MARGIN;
    let legend_left = panels_left + panel_width * panels.len() as f64 + 10.0;
    let width = (legend_left + 70.0).max(MARGIN + header.width() + MARGIN);
    let grid_top = header_bottom + 30.0 + top_labels;
    let height = grid_top + grid.max(120.0) + 40.0 + MARGIN;

    let mut svg = Svg::new(width, height);
    svg.raw(&format!(
        r#"<defs><linearGradient id="attention-scale" x1="0" y1="1" x2="0" y2="0"><stop offset="0" stop-color="{ATTENTION_COLOUR}" stop-opacity="0"/><stop offset="1" stop-color="{ATTENTION_COLOUR}" stop-opacity="1"/></linearGradient></defs>"#
    ));
    header.draw(&mut svg);

    for (p, panel) in panels.iter().enumerate() {
        let left = panels_left + panel_width * p as f64 + label_room;
        svg.text(
            "panel-title",
            left + grid / 2.0,
            header_bottom + 18.0,
            Anchor::Middle,
            &format!("head {}.{}", panel.layer, panel.head),
        );
        // Query labels to the left of each row, key labels above each column.
        for (i, label) in labels.iter().enumerate() {
            let centre = cell * (i as f64 + 0.5);
            svg.text(
                "token query",
                left - 4.0,
                grid_top + centre + token_size * 0.35,
                Anchor::End,
                label,
            );
            let (x, y) = (left + centre + 3.0, grid_top - 4.0);
            svg.raw(&format!(
                r#"<text class="token key" x="{}" y="{}" text-anchor="start" transform="rotate(-60 {} {})">{}</text>"#,
                number(x),
                number(y),
                number(x),
                number(y),
                escape(label)
            ));
        }
        svg.raw(&format!(
            r#"<g class="heatmap" id="head-{}-{}">"#,
            panel.layer, panel.head
        ));
        for (q, row) in panel.pattern.iter().enumerate().take(n) {
            for k in 0..n {
                let (x, y) = (left + cell * k as f64, grid_top + cell * q as f64);
                if k > q {
                    svg.rect("masked", x, y, cell, cell, "");
                } else {
                    let weight = row.get(k).copied().unwrap_or(0.0);
                    svg.rect(
                        "cell",
                        x,
                        y,
                        cell,
                        cell,
                        &format!(r#"fill-opacity="{}""#, opacity(weight)),
                    );
                }
            }
        }
        svg.raw("</g>");
        svg.rect("frame", left, grid_top, grid, grid, "");
        svg.text(
            "axis-title",
            left + grid / 2.0,
            grid_top + grid + 20.0,
            Anchor::Middle,
            "key position",
        );
    }

    // The colour legend: a 0-to-1 gradient in the cells' colour, with ticks.
    let legend_height = grid.clamp(100.0, 200.0);
    svg.rect(
        "legend-bar",
        legend_left,
        grid_top,
        14.0,
        legend_height,
        r##"fill="url(#attention-scale)" stroke="#888888" stroke-width="1""##,
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = grid_top + legend_height * (1.0 - tick);
        svg.line("tick", legend_left + 14.0, y, legend_left + 18.0, y);
        svg.text(
            "tick-label",
            legend_left + 21.0,
            y + 3.5,
            Anchor::Start,
            &tick_label(tick, 0.25),
        );
    }
    svg.text(
        "axis-title",
        legend_left,
        grid_top - 8.0,
        Anchor::Start,
        "weight",
    );
    let style = HEATMAP_STYLE
        .replace("FONT", FONT)
        .replace("TOKEN_SIZE", &number(token_size));
    svg.finish(&header.title, &style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(
            escape(r#"a<b & "c" 'd'>"#),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
        assert_eq!(escape("bell\u{7}"), "bell\u{FFFD}");
    }

    #[test]
    fn numbers_are_short_and_never_negative_zero() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(1.256), "1.26");
        assert_eq!(number(-0.001), "0");
        assert_eq!(number(-12.5), "-12.5");
    }

    #[test]
    fn ticks_cover_the_range_with_nice_steps() {
        let (ticks, step) = nice_ticks(-4.05, 1.0, 6);
        assert_eq!(step, 1.0);
        assert_eq!(ticks, vec![-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0]);
        let (ticks, step) = nice_ticks(0.0, 1.0, 6);
        assert_eq!(step, 0.2);
        assert_eq!(ticks.len(), 6);
        assert!((ticks[5] - 1.0).abs() < 1e-12);
        let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t, step)).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let (ticks, _) = nice_ticks(-0.3, 1.37, 6);
        assert!(
            ticks[0] <= -0.3 && *ticks.last().unwrap() >= 1.37,
            "{ticks:?}"
        );
        assert_eq!(tick_label(-0.0001, 0.5), "0.0");
        assert_eq!(tick_label(0.25, 0.25), "0.25");
        assert_eq!(tick_label(3.0, 1.0), "3");
    }

    #[test]
    fn token_labels_show_spaces_and_opacities_are_clamped() {
        assert_eq!(token_label(" in"), "\u{2423}in");
        assert_eq!(token_label("\u{2581}Van"), "\u{2423}Van");
        assert_eq!(token_label("a\nb"), "a\u{21B5}b");
        assert_eq!(token_label("abcdefghijklmnop"), "abcdefghijk…");
        assert_eq!(opacity(0.123456), "0.1235");
        assert_eq!(opacity(1.5), "1.0000");
        assert_eq!(opacity(f32::NAN), "0.0000");
    }

    #[test]
    fn long_prompts_get_smaller_cells_and_labels() {
        let panel = |n: usize| AttentionPanel {
            layer: 0,
            head: 0,
            pattern: vec![vec![1.0 / n as f32; n]; n],
        };
        let tokens = |n: usize| (0..n).map(|i| format!(" t{i}")).collect::<Vec<_>>();
        let short = attention_chart("m", "p", &tokens(4), &[panel(4)]);
        let long = attention_chart("m", "p", &tokens(60), &[panel(60)]);
        assert!(short.contains(".token { font-size: 10px; }"), "{short}");
        // 360 px / 60 tokens = 6 px, clamped to 8 px cells and 6.8 px labels.
        assert!(long.contains(".token { font-size: 6.8px; }"));
        assert!(long.contains(r#"width="8" height="8""#));
        assert_eq!(long.matches("class=\"cell\"").count(), 60 * 61 / 2);
        assert_eq!(long.matches("class=\"masked\"").count(), 60 * 59 / 2);
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
