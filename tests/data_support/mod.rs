//! Tokenizers shared by the data tests, loaded once per test binary.

use std::path::Path;
use std::sync::OnceLock;

use circuit::model::Tokenizer;

/// The real GPT-2 tokenizer (fixture built by scripts/make_gpt2_tokenizer.py).
pub fn gpt2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/gpt2-tokenizer/tokenizer.json"),
        )
        .unwrap()
    })
}

/// stories260K's byte-fallback tokenizer (adds BOS), read from ../shared.
pub fn stories() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/models/stories260K/tokenizer.json"),
        )
        .unwrap()
    })
}
