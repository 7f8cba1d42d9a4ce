//! `--format text|json|markdown`, shared by every command that prints a report; `--json` and
//! `--markdown` stay as aliases.

/// How a command prints its result.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Tables and sentences for a terminal.
    Text,
    /// Machine-readable JSON.
    Json,
    /// A markdown table.
    Markdown,
}

/// `--format text|json|markdown` with its aliases.
#[derive(clap::Args, Debug)]
pub struct FormatArgs {
    /// Output format (default: text).
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with_all = ["json", "markdown"])]
    format: Option<Format>,
    /// Same as --format json (deterministic: byte-identical across runs and thread counts).
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Same as --format markdown.
    #[arg(long)]
    markdown: bool,
}

/// `--format text|json` with its alias, for commands that have no markdown form.
#[derive(clap::Args, Debug)]
pub struct TextOrJsonArgs {
    /// Output format (default: text).
    #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "json")]
    format: Option<TextOrJson>,
    /// Same as --format json.
    #[arg(long)]
    json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum TextOrJson {
    Text,
    Json,
}

impl FormatArgs {
    pub fn format(&self) -> Format {
        match (self.format, self.json, self.markdown) {
            (Some(format), _, _) => format,
            (None, true, _) => Format::Json,
            (None, false, true) => Format::Markdown,
            (None, false, false) => Format::Text,
        }
    }
}

impl TextOrJsonArgs {
    pub fn format(&self) -> Format {
        match (self.format, self.json) {
            (Some(TextOrJson::Json), _) | (None, true) => Format::Json,
            _ => Format::Text,
        }
    }
}
