//! SVG pictures as PNG files (`circuit show --png`), rendered in pure Rust by resvg. Text needs a
//! font: the system's fonts are loaded (Debian: fonts-dejavu), and a machine with none is an
//! error rather than a picture without its labels.

use miette::Diagnostic;
use resvg::{tiny_skia, usvg};
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum PngError {
    #[error("no font found to draw the picture's text with")]
    #[diagnostic(
        code(circuit::report::png_no_font),
        help("install a font (Debian: apt-get install fonts-dejavu-core), or use --html")
    )]
    NoFont,
    #[error("the picture could not be rendered: {0}")]
    #[diagnostic(code(circuit::report::png_render))]
    Render(String),
}

/// `svg` rendered at `scale` pixels per SVG unit, as PNG bytes.
pub fn render(svg: &str, scale: f32) -> Result<Vec<u8>, PngError> {
    let mut options = usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    if options.fontdb.is_empty() {
        return Err(PngError::NoFont);
    }
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| PngError::Render(e.to_string()))?;
    let size = tree.size();
    let (width, height) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(width, height)
        .ok_or_else(|| PngError::Render(format!("a {width} × {height} picture is too large")))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| PngError::Render(e.to_string()))
}
