//! Rendering results: text, JSON, markdown, diff.
