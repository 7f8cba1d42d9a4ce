//! The built-in model's embedded files: its config parses, its tokenizer gives every task word
//! one token with byte offsets and no BOS, and the folder stays small. None of these need the
//! engine; tests/builtin_model.rs runs the weights.

use circuit::model::builtin::{self, DEFAULT_MODEL_NAME};
use circuit::model::Architecture;
use serde_json::Value;

fn lexicon() -> Value {
    serde_json::from_str(include_str!("../src/data/lexicon.json")).expect("lexicon.json parses")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

const KINDS: [&str; 5] = ["numerals", "number_words", "months", "days", "letters"];

#[test]
fn default_model_is_listed_as_builtin() {
    assert_eq!(builtin::names(), &[DEFAULT_MODEL_NAME]);
    assert!(builtin::is_builtin("toy-seqcont"));
    assert!(!builtin::is_builtin("gpt2"));
    assert!(builtin::files(DEFAULT_MODEL_NAME).is_some());
}

#[test]
fn config_parses_as_a_small_gpt2() {
    let config = builtin::config(DEFAULT_MODEL_NAME).unwrap();
    assert_eq!(config.architecture, Architecture::Gpt2);
    assert!((2..=4).contains(&config.n_layers), "{config:?}");
    assert!((4..=8).contains(&config.n_heads), "{config:?}");
    assert!((64..=128).contains(&config.d_model), "{config:?}");
    assert_eq!(config.activation, "gelu_new");
    assert!(config.tie_word_embeddings);
    assert_eq!(config.bos_token_id, None);
    let tokenizer = builtin::tokenizer(DEFAULT_MODEL_NAME).unwrap();
    assert_eq!(config.vocab_size, tokenizer.vocab_size());
}

#[test]
fn unknown_builtin_name_is_an_error_naming_the_known_ones() {
    let err = builtin::config("gpt-17").unwrap_err().to_string();
    assert!(err.contains("gpt-17"), "{err}");
    let source = std::error::Error::source(&builtin::config("gpt-17").unwrap_err())
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(source.contains("toy-seqcont"), "{source}");
    let err = builtin::tokenizer("gpt-17").unwrap_err().to_string();
    assert!(
        err.contains("gpt-17") && err.contains("toy-seqcont"),
        "{err}"
    );
}

#[test]
fn every_answer_string_is_one_token() {
    let tokenizer = builtin::tokenizer(DEFAULT_MODEL_NAME).unwrap();
    let lexicon = lexicon();
    let mut checked = 0;
    for kind in KINDS {
        for member in strings(&lexicon["sequences"][kind]["members"]) {
            // The tasks' answers are written with the leading space GPT-2 tokenizers need.
            let ids = tokenizer.encode_plain(&format!(" {member}")).unwrap();
            assert_eq!(ids.len(), 1, "{member:?} became {ids:?}");
            assert_eq!(tokenizer.id_to_token(ids[0]).as_deref(), Some(&*member));
            checked += 1;
        }
    }
    assert_eq!(checked, 99 + 20 + 12 + 7 + 26);
}

#[test]
fn vocabulary_covers_every_lexicon_word_and_punctuation() {
    let tokenizer = builtin::tokenizer(DEFAULT_MODEL_NAME).unwrap();
    let unk = tokenizer
        .inner()
        .token_to_id("[UNK]")
        .expect("[UNK] in vocab");
    let lexicon = lexicon();
    let mut texts: Vec<String> = vec![". ,".to_string()];
    for kind in KINDS {
        texts.extend(strings(&lexicon["sequences"][kind]["members"]));
    }
    for template in lexicon["templates"].as_object().unwrap().values() {
        texts.push(template["sentence"].as_str().unwrap().to_string());
        texts.push(template["query"].as_str().unwrap().to_string());
    }
    texts.extend(strings(&lexicon["nouns"]));
    texts.extend(strings(&lexicon["names"]));
    for key in ["names", "places", "objects", "templates"] {
        texts.extend(strings(&lexicon["ioi"][key]));
    }
    for text in texts {
        // Placeholders such as {filler} are not words of the vocabulary.
        let words: String = text
            .split(['{', '}'])
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let ids = tokenizer.encode_plain(&words).unwrap();
        assert!(!ids.is_empty() || words.trim().is_empty(), "{text:?}");
        assert!(
            !ids.contains(&unk),
            "{text:?} has a word outside the vocabulary: {ids:?}"
        );
    }
    // A word outside the lexicon is [UNK], not an error.
    assert_eq!(tokenizer.encode_plain("Zebra").unwrap(), vec![unk]);
}

#[test]
fn template_prompt_has_one_token_per_word_with_byte_offsets_and_no_bos() {
    let tokenizer = builtin::tokenizer(DEFAULT_MODEL_NAME).unwrap();
    let text = "Van done in 1. Hat done in 2. Sun done in";
    let encoded = tokenizer.encode(text).unwrap();
    assert!(!encoded.has_bos);
    let pieces: Vec<&str> = encoded.offsets.iter().map(|&(s, e)| &text[s..e]).collect();
    assert_eq!(
        pieces,
        ["Van", "done", "in", "1", ".", "Hat", "done", "in", "2", ".", "Sun", "done", "in"]
    );
    assert_eq!(encoded.offsets[3], (12, 13)); // "1"
    assert_eq!(encoded.offsets[4], (13, 14)); // "."
                                              // Words decode with a leading space, punctuation without (GPT-2's convention), so a prompt
                                              // decodes to itself after one leading space and an answer id to its answer string.
    assert_eq!(tokenizer.decode(&encoded.ids), format!(" {text}"));
    assert_eq!(tokenizer.decode(&encoded.ids[3..5]), " 1.");
}

#[test]
fn longest_task_prompt_fits_the_context() {
    let config = builtin::config(DEFAULT_MODEL_NAME).unwrap();
    let tokenizer = builtin::tokenizer(DEFAULT_MODEL_NAME).unwrap();
    // Six members in the longest template, with the longest fillers.
    let prompt = "Marcus arrived on Wednesday. Rachel arrived on Thursday. Steven arrived on \
                  Friday. Daniel arrived on Saturday. Sarah arrived on Sunday. Laura arrived on \
                  Monday. Brian arrived on";
    let n = tokenizer.encode(prompt).unwrap().ids.len();
    assert_eq!(n, 6 * 5 + 3);
    assert!(n <= config.n_ctx, "{n} tokens > n_ctx {}", config.n_ctx);
}

#[test]
fn embedded_model_is_at_most_five_megabytes() {
    let files = builtin::files(DEFAULT_MODEL_NAME).unwrap();
    let total = files.config_json.len() + files.safetensors.len() + files.tokenizer_json.len();
    assert!(total <= 5 * 1024 * 1024, "{total} bytes");
    // The embedded bytes are the committed folder's, byte for byte.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/toy-seqcont");
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        files.safetensors
    );
}
