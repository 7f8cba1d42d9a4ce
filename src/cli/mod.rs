//! One module per subcommand: its clap arguments and what it does. `src/main.rs` only dispatches.

pub mod check;
pub mod dataset;
pub mod diff;
pub mod eval;
pub mod fmt;
pub mod run;
pub mod show;
pub mod test;
