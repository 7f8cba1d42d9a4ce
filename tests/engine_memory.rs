//! A model that does not fit in memory is refused before loading, with the estimate and what is
//! available (`circuit::model::does_not_fit`), instead of the process being killed. The
//! available memory is faked with `$CIRCUIT_MEMORY_AVAILABLE` (src/model/memory.rs).

mod cli_support;

use cli_support::{command, stderr, stories};

fn run_with_available(available: &str) -> std::process::Output {
    let model = stories();
    command(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Once upon a time",
    ])
    .env("CIRCUIT_MEMORY_AVAILABLE", available)
    .output()
    .expect("the circuit binary runs")
}

#[test]
fn a_model_larger_than_the_available_memory_is_refused_before_loading() {
    // stories260K: 292 800 parameters (+ its largest tensor, 32 768 elements, once more) as f32.
    let out = run_with_available("1M");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("circuit::model::does_not_fit"), "{err}");
    // The message as one line: miette wraps it to the terminal width.
    let words: Vec<&str> = err.split_whitespace().filter(|w| *w != "│").collect();
    assert!(
        words.join(" ").contains(
            "the model needs about 1.24 MiB of memory with f32 weights, \
             but 1.00 MiB is available ($CIRCUIT_MEMORY_AVAILABLE)"
        ),
        "{err}"
    );
}

#[test]
fn a_model_within_the_available_memory_loads() {
    let out = run_with_available("2M");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_unreadable_available_memory_setting_is_an_error() {
    let out = run_with_available("lots");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("circuit::model::memory_available_var"),
        "{err}"
    );
}
