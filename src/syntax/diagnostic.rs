//! Diagnostics for `.circuit` files: one type for parse errors, resolve errors and warnings,
//! each carrying the whole file as its miette source so reports show every labelled line.

use std::fmt;
use std::sync::Arc;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use serde::Serialize;

use super::ast::Span;

/// The source text of one file, shared by every diagnostic about it.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The name reports show (usually the path as the user gave it).
    pub name: String,
    pub text: Arc<str>,
    named: NamedSource<Arc<str>>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> SourceFile {
        let name = name.into();
        let text: Arc<str> = text.into();
        let named = NamedSource::new(&name, text.clone());
        SourceFile { name, text, named }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let mut prefix_end = offset;
        while !self.text.is_char_boundary(prefix_end) {
            prefix_end -= 1;
        }
        let before = &self.text[..prefix_end];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// A labelled span; the first label of a diagnostic is its primary one.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One error or warning about a `.circuit` file.
#[derive(Clone, Debug)]
pub struct SourceDiagnostic {
    /// `circuit::parse::syntax`, `circuit::resolve::unknown_head`, ...
    pub code: String,
    pub severity: Severity,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    pub source: Option<SourceFile>,
}

impl SourceDiagnostic {
    pub fn error(code: &str, message: impl Into<String>) -> SourceDiagnostic {
        SourceDiagnostic {
            code: code.to_string(),
            severity: Severity::Error,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            source: None,
        }
    }

    pub fn warning(code: &str, message: impl Into<String>) -> SourceDiagnostic {
        SourceDiagnostic {
            severity: Severity::Warning,
            ..SourceDiagnostic::error(code, message)
        }
    }

    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn with_source(mut self, source: &SourceFile) -> Self {
        self.source = Some(source.clone());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The primary span's start, for sorting and line/column.
    pub fn primary_offset(&self) -> Option<usize> {
        self.labels.first().map(|l| l.span.start)
    }

    /// Renders the diagnostic as the user sees it: without colour, `width` columns wide.
    pub fn render_plain(&self, width: usize) -> String {
        render_with(self, GraphicalTheme::unicode_nocolor(), width)
    }

    /// Renders with colours (for a terminal).
    pub fn render_colored(&self, width: usize) -> String {
        render_with(self, GraphicalTheme::unicode(), width)
    }

    /// The diagnostic as JSON for editors and CI: code, severity, message, file, line, column,
    /// byte span and help.
    pub fn to_json(&self) -> serde_json::Value {
        let primary = self.labels.first();
        let (line, column) = match (&self.source, primary) {
            (Some(src), Some(label)) => {
                let (l, c) = src.line_column(label.span.start);
                (Some(l), Some(c))
            }
            _ => (None, None),
        };
        serde_json::json!({
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": self.source.as_ref().map(|s| s.name.clone()),
            "line": line,
            "column": column,
            "span": primary.map(|l| serde_json::json!({"start": l.span.start, "end": l.span.end})),
            "label": primary.map(|l| l.message.clone()),
            "help": self.help,
        })
    }
}

fn render_with(diagnostic: &dyn miette::Diagnostic, theme: GraphicalTheme, width: usize) -> String {
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(width)
        .with_links(false)
        .with_urls(false);
    if handler.render_report(&mut out, diagnostic).is_err() {
        // Rendering into a String cannot fail short of a formatter bug; fall back to the message.
        out = format!("{diagnostic}\n");
    }
    out
}

impl fmt::Display for SourceDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SourceDiagnostic {}

impl miette::Diagnostic for SourceDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(&self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source
            .as_ref()
            .map(|s| &s.named as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() || self.source.is_none() {
            return None;
        }
        let len = self.source.as_ref().map(|s| s.text.len()).unwrap_or(0);
        Some(Box::new(self.labels.iter().enumerate().map(
            move |(i, label)| {
                let start = label.span.start.min(len);
                let end = label.span.end.clamp(start, len);
                let span = SourceSpan::from(start..end);
                if i == 0 {
                    LabeledSpan::new_primary_with_span(Some(label.message.clone()), span)
                } else {
                    LabeledSpan::new_with_span(Some(label.message.clone()), span)
                }
            },
        )))
    }
}

/// How many warnings of one code are rendered before the rest are only counted.
pub const WARNINGS_SHOWN_PER_CODE: usize = 20;

/// Every diagnostic about one file (or several), in source order.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics {
    pub items: Vec<SourceDiagnostic>,
}

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    pub fn push(&mut self, d: SourceDiagnostic) {
        self.items.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.is_error())
    }

    pub fn error_count(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    pub fn warning_count(&self) -> usize {
        self.items.len() - self.error_count()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Attaches `source` to every diagnostic and sorts them by position (stable).
    pub fn finish(mut self, source: &SourceFile) -> Diagnostics {
        for d in &mut self.items {
            if d.source.is_none() {
                d.source = Some(source.clone());
            }
        }
        self.items.sort_by_key(|d| d.primary_offset().unwrap_or(0));
        self
    }

    /// Every diagnostic rendered for stderr: coloured when stderr is a terminal, plain
    /// otherwise, 100 columns wide. What `circuit check` prints.
    pub fn render_for_stderr(&self) -> String {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            self.render_each(|d| d.render_colored(100))
        } else {
            self.render_plain(100)
        }
    }

    /// Every diagnostic rendered without colour, separated by blank lines.
    pub fn render_plain(&self, width: usize) -> String {
        self.render_each(|d| d.render_plain(width))
    }

    /// Renders every error, and the first [`WARNINGS_SHOWN_PER_CODE`] warnings of each code; a
    /// summary line counts the warnings left out (a file with thousands of repeated heads
    /// would otherwise print megabytes). The counts and `--json` still cover every one.
    fn render_each(&self, render: impl Fn(&SourceDiagnostic) -> String) -> String {
        let mut shown_per_code: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut hidden_per_code: std::collections::BTreeMap<&str, usize> = Default::default();
        let mut parts = Vec::new();
        for d in &self.items {
            if !d.is_error() {
                let shown = shown_per_code.entry(d.code.as_str()).or_default();
                if *shown >= WARNINGS_SHOWN_PER_CODE {
                    *hidden_per_code.entry(d.code.as_str()).or_default() += 1;
                    continue;
                }
                *shown += 1;
            }
            parts.push(render(d));
        }
        let mut out = parts.join("\n");
        for (code, hidden) in hidden_per_code {
            out.push_str(&format!(
                "\n... and {hidden} more `{code}` warning{} not shown (the first {WARNINGS_SHOWN_PER_CODE} are; `--json` lists every one)\n",
                if hidden == 1 { "" } else { "s" }
            ));
        }
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.error_count();
        let file = self
            .items
            .first()
            .and_then(|d| d.source.as_ref())
            .map(|s| s.name.as_str())
            .unwrap_or("<input>");
        write!(
            f,
            "{file}: {errors} error{}",
            if errors == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// So that a caller can `?` a failed load into a `miette::Report`: the report lists every
/// diagnostic as related.
impl miette::Diagnostic for Diagnostics {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("circuit::check::failed"))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        Some(Box::new(
            self.items.iter().map(|d| d as &dyn miette::Diagnostic),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head listed again far below its first listing: the rendering shows the two places
    /// and their neighbours only, not the lines between.
    fn far_apart(n: usize) -> Diagnostics {
        let mut text = String::from("circuit c {\n");
        let mut starts = Vec::new();
        for _ in 0..n {
            starts.push(text.len() + 2);
            text.push_str("  9.1 @ END\n");
        }
        text.push_str("}\n");
        let source = SourceFile::new("big.circuit", text);
        let mut d = Diagnostics::new();
        for &start in &starts[1..] {
            d.push(
                SourceDiagnostic::warning("circuit::resolve::duplicate_head", "listed twice")
                    .with_label(start..start + 3, "again")
                    .with_label(starts[0]..starts[0] + 3, "first listed here")
                    .with_help("list it once"),
            );
        }
        d.finish(&source)
    }

    #[test]
    fn a_snippet_shows_the_two_places_only() {
        let d = far_apart(200);
        let last = d.items.last().unwrap().render_plain(100);
        let source_lines = last.lines().filter(|l| l.contains("9.1 @ END")).count();
        assert!(
            source_lines <= 6,
            "{source_lines} source lines shown:\n{last}"
        );
        assert!(
            last.contains("first listed here") && last.contains("again"),
            "{last}"
        );
    }

    #[test]
    fn after_twenty_warnings_of_one_code_a_line_counts_the_rest() {
        let d = far_apart(101);
        let out = d.render_plain(100);
        assert_eq!(
            out.matches("circuit::resolve::duplicate_head\n").count(),
            20,
            "{out}"
        );
        assert!(
            out.contains("... and 80 more `circuit::resolve::duplicate_head` warnings not shown"),
            "{out}"
        );
        assert_eq!(d.warning_count(), 100, "the count covers every warning");
        assert!(out.len() < 20_000, "{} bytes", out.len());
    }
}
