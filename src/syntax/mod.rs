//! The `.circuit` grammar (grammar/circuit.pest), AST with byte spans, parser, formatter and
//! syntax diagnostics.

pub mod ast;
pub mod comments;
pub mod diagnostic;
pub mod format;
pub mod parser;

pub use diagnostic::{Diagnostics, Severity, SourceDiagnostic, SourceFile};
pub use format::{format_file, format_source};
pub use parser::{parse, parse_str};
