//! `circuit eval --svg`: the faithfulness of a file's circuits as bars with per-prompt box plots.

use super::canvas::{
    escape, nice_ticks, number, text_width, tick_label, truncate, Anchor, Header, Scale, Svg, FONT,
    MARGIN,
};
use crate::measure::Quantiles;
use crate::report::{num, quantiles_text, FileReport};

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
