//! The real GPT-2 tokenizer fixture (built by scripts/make_gpt2_tokenizer.py from OpenAI's
//! encoder.json and vocab.bpe, hash-checked) through `circuit::model::Tokenizer`.

use std::path::Path;

use circuit::model::Tokenizer;

fn gpt2() -> Tokenizer {
    Tokenizer::from_file(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tokenizer/tokenizer.json"),
    )
    .unwrap()
}

#[test]
fn digits_with_spaces_and_their_offsets() {
    let enc = gpt2().encode(" 1 2 3 4").unwrap();
    assert_eq!(enc.ids, [352, 362, 513, 604]);
    assert_eq!(enc.offsets, [(0, 2), (2, 4), (4, 6), (6, 8)]);
    assert!(!enc.has_bos, "GPT-2 adds no BOS");
}

#[test]
fn known_ids_and_the_end_of_text_token() {
    let tok = gpt2();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.encode_plain("Hello world").unwrap(), [15496, 995]);
    assert_eq!(tok.encode_plain("<|endoftext|>").unwrap(), [50256]);
    assert_eq!(tok.id_to_token(50256).as_deref(), Some("<|endoftext|>"));
    // No prefix space is added: "world" alone differs from " world".
    assert_eq!(tok.encode_plain(" world").unwrap(), [995]);
    assert_ne!(tok.encode_plain("world").unwrap(), [995]);
}

#[test]
fn decoding_round_trips_bytes() {
    let tok = gpt2();
    let text = "When Mary and John went to the store, John gave a drink to Mary. Ünïcödé ✓";
    let ids = tok.encode_plain(text).unwrap();
    assert_eq!(tok.decode(&ids), text);
}
