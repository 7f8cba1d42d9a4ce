//! `circuit discover --svg`: the faithfulness-against-size curve as a line chart: exact
//! faithfulness (y) of the top fraction of ranked candidates (x, logarithmic from 0.1% to
//! 100%), with reference lines at 0 (empty circuit), 1 (full model) and the target, and the
//! found circuit marked.

use crate::report::svg::{
    nice_ticks, number, tick_label, Anchor, Header, Scale, Svg, FONT, MARGIN,
};

use super::Discovery;

const STYLE: &str = "text { font-family: FONT; fill: #222222; }
.title { font-size: 16px; font-weight: bold; }
.subtitle { font-size: 11px; fill: #555555; }
.tick-label { font-size: 10px; fill: #555555; }
.axis-title { font-size: 11px; fill: #333333; }
.ref-label { font-size: 10px; fill: #333333; }
.grid { stroke: #e6e6e6; stroke-width: 1; }
.axis { stroke: #888888; stroke-width: 1; }
.ref { stroke: #333333; stroke-width: 1.2; stroke-dasharray: 4 3; }
.target { stroke: #e45756; stroke-width: 1.2; stroke-dasharray: 6 3; }
.curve { fill: none; stroke: #4c78a8; stroke-width: 2; }
.point { fill: #4c78a8; }
.found { fill: #e45756; stroke: #ffffff; stroke-width: 1.5; }
.point-label { font-size: 10px; fill: #333333; }
";

const PLOT_WIDTH: f64 = 520.0;
const PLOT_HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;

/// The chart as a standalone SVG document.
pub fn curve_chart(d: &Discovery, title: &str) -> String {
    let header = Header {
        title: title.to_string(),
        subtitles: vec![
            format!(
                "{} candidates ({}), ranked by {}; target {}",
                d.candidates.len(),
                d.granularity.name(),
                d.rank.name(),
                crate::report::num(d.target)
            ),
            format!(
                "found: {} components, faithfulness {:.4}; CPR {:.4}, CMD {:.4}; {} exact evaluations",
                d.found.len(),
                d.faithfulness,
                d.curve.cpr,
                d.curve.cmd,
                d.evaluations
            ),
        ],
    };
    let top = header.bottom() + 20.0;
    // Room right of the plot for the reference lines' labels.
    let width = (LEFT + PLOT_WIDTH + MARGIN * 2.0 + 80.0).max(header.width() + 2.0 * MARGIN);
    let height = top + PLOT_HEIGHT + 50.0;
    let mut svg = Svg::new(width, height);
    header.draw(&mut svg);

    let values =
        d.curve
            .points
            .iter()
            .map(|p| p.faithfulness)
            .chain([0.0, 1.0, d.target, d.faithfulness]);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (ticks, step) = nice_ticks(lo, hi, 6);
    let y = Scale {
        lo: ticks[0],
        hi: *ticks.last().unwrap_or(&hi),
        pixel_lo: top + PLOT_HEIGHT,
        pixel_hi: top,
    };
    // Logarithmic fraction axis: log10 from 0.001 to 1.
    let x = Scale {
        lo: -3.0,
        hi: 0.0,
        pixel_lo: LEFT + MARGIN,
        pixel_hi: LEFT + MARGIN + PLOT_WIDTH,
    };
    let at_x = |fraction: f64| x.at(fraction.max(1e-3).log10());

    for &t in &ticks {
        let py = y.at(t);
        svg.line("grid", x.pixel_lo, py, x.pixel_hi, py);
        svg.text(
            "tick-label",
            x.pixel_lo - 6.0,
            py + 3.5,
            Anchor::End,
            &tick_label(t, step),
        );
    }
    for (fraction, label) in [(0.001, "0.1%"), (0.01, "1%"), (0.1, "10%"), (1.0, "100%")] {
        let px = at_x(fraction);
        svg.line("grid", px, y.pixel_hi, px, y.pixel_lo);
        svg.text("tick-label", px, y.pixel_lo + 14.0, Anchor::Middle, label);
    }
    svg.line("axis", x.pixel_lo, y.pixel_lo, x.pixel_hi, y.pixel_lo);
    svg.line("axis", x.pixel_lo, y.pixel_hi, x.pixel_lo, y.pixel_lo);
    for (value, class, label) in [
        (0.0, "ref", "empty".to_string()),
        (1.0, "ref", "full".to_string()),
        (
            d.target,
            "target",
            format!("target {}", crate::report::num(d.target)),
        ),
    ] {
        let py = y.at(value);
        svg.line(class, x.pixel_lo, py, x.pixel_hi, py);
        svg.text(
            "ref-label",
            x.pixel_hi + 4.0,
            py + 3.5,
            Anchor::Start,
            &label,
        );
    }
    let path: Vec<String> = d
        .curve
        .points
        .iter()
        .map(|p| {
            format!(
                "{},{}",
                number(at_x(p.fraction)),
                number(y.at(p.faithfulness))
            )
        })
        .collect();
    svg.raw(&format!(
        r#"<polyline class="curve" points="{}"/>"#,
        path.join(" ")
    ));
    for p in &d.curve.points {
        svg.raw(&format!(
            r#"<circle class="point" cx="{}" cy="{}" r="3"><title>top {} ({}): faithfulness {:.4}</title></circle>"#,
            number(at_x(p.fraction)),
            number(y.at(p.faithfulness)),
            p.k,
            tick_label(p.fraction * 100.0, 0.1) + "%",
            p.faithfulness
        ));
    }
    // The found circuit, at its size as a fraction of the candidates.
    let n = d.candidates.len().max(1) as f64;
    let fx = at_x(d.found.len() as f64 / n);
    let fy = y.at(d.faithfulness);
    svg.raw(&format!(
        r#"<circle class="found" cx="{}" cy="{}" r="5"><title>found: {} components, faithfulness {:.4}</title></circle>"#,
        number(fx),
        number(fy),
        d.found.len(),
        d.faithfulness
    ));
    svg.text(
        "point-label",
        fx + 8.0,
        fy + 16.0,
        Anchor::Start,
        &format!("found ({})", d.found.len()),
    );
    svg.text(
        "axis-title",
        (x.pixel_lo + x.pixel_hi) / 2.0,
        y.pixel_lo + 32.0,
        Anchor::Middle,
        "top fraction of ranked candidates (log scale)",
    );
    svg.raw(&format!(
        r#"<text class="axis-title" x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">faithfulness</text>"#,
        number(MARGIN + 8.0),
        number((y.pixel_lo + y.pixel_hi) / 2.0),
        number(MARGIN + 8.0),
        number((y.pixel_lo + y.pixel_hi) / 2.0)
    ));
    svg.finish(title, &STYLE.replace("FONT", FONT))
}
