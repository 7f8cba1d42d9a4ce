//! The `.circuit` grammar, AST with byte spans, parser, formatter and syntax diagnostics.
