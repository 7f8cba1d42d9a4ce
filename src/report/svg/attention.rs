//! `circuit run --attention L.H --svg`: heads' attention patterns on one prompt as heatmaps.

use super::canvas::{
    escape, number, text_width, tick_label, truncate, Anchor, Header, Svg, FONT, MARGIN,
};

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
}
