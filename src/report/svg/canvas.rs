//! The drawing layer every chart shares: escaping, number formatting, ticks, text-width
//! estimates, the [`Svg`] document builder, linear [`Scale`]s and the title [`Header`].
//! Output is deterministic: coordinates are rounded to two decimals, text widths are estimated
//! from character counts rather than measured by a font engine.

use std::fmt::Write as _;

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

/// The font stack every picture asks for (no web fonts: pictures must render offline).
pub const FONT: &str = "'DejaVu Sans', 'Helvetica Neue', Helvetica, Arial, sans-serif";

/// The outer margin of every chart, in pixels.
pub const MARGIN: f64 = 20.0;

/// The title block both charts open with: a title and a line per subtitle, from the top-left
/// margin.
pub struct Header {
    pub title: String,
    pub subtitles: Vec<String>,
}

impl Header {
    /// The widest line of the block.
    pub fn width(&self) -> f64 {
        (self.subtitles.iter())
            .map(|t| text_width(t, 11.0))
            .fold(text_width(&self.title, 16.0), f64::max)
    }

    /// Where the block ends.
    pub fn bottom(&self) -> f64 {
        MARGIN + 16.0 + 16.0 * self.subtitles.len() as f64
    }

    pub fn draw(&self, svg: &mut Svg) {
        svg.text("title", MARGIN, MARGIN + 12.0, Anchor::Start, &self.title);
        for (i, line) in self.subtitles.iter().enumerate() {
            let y = MARGIN + 32.0 + 16.0 * i as f64;
            svg.text("subtitle", MARGIN, y, Anchor::Start, line);
        }
    }
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
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
