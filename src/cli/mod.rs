//! One module per subcommand: its clap arguments, and the printing of what the library computes.
//! `src/main.rs` only dispatches. Private to the binary: the library does not depend on clap.

pub mod cache;
pub mod check;
pub mod dataset;
pub mod dataset_import;
pub mod diff;
pub mod discover;
pub mod eval;
pub mod export;
pub mod files;
pub mod fmt;
pub mod format;
pub mod heads;
pub mod import;
pub mod progress;
pub mod run;
pub mod scan;
pub mod scores;
pub mod settings;
pub mod show;
pub mod test;
