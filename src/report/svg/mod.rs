//! Pictures of results as standalone SVG 1.1 documents, generated as strings.
//!
//! [`canvas`] holds the helper layer every chart shares ([`escape`], [`number`], [`nice_ticks`],
//! [`tick_label`], [`Svg`], [`Scale`], [`Header`]); [`faithfulness_chart`] draws
//! `circuit eval --svg`, [`attention_chart`] draws `circuit run --attention L.H --svg`. Output is
//! deterministic: the same report gives the same bytes (coordinates are rounded to two decimals,
//! text widths are estimated from character counts rather than measured by a font engine).

pub mod attention;
pub mod canvas;
pub mod faithfulness;

pub use attention::{attention_chart, opacity, token_label, AttentionPanel, ATTENTION_COLOUR};
pub use canvas::{
    escape, nice_ticks, number, text_width, tick_label, truncate, Anchor, Header, Scale, Svg, FONT,
    MARGIN,
};
pub use faithfulness::faithfulness_chart;
