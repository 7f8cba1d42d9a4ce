//! The `circuit` command line: argument parsing and dispatch only; each subcommand lives in
//! `cli/` (argument parsing and printing; the work is done by the `circuit` library). The CLI
//! is part of the binary, not of the library's API.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Circuit hypotheses as .circuit files, evaluated for faithfulness on a real transformer.
#[derive(Parser, Debug)]
#[command(name = "circuit", version, about)]
struct Cli {
    /// No progress on stderr (warnings and errors still print).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// How model weights are held in memory: `f32` (converted at load: the faster products),
    /// `stored` (BF16/F16 matrices left in the mapped file, converted inside each product: about
    /// half the memory), `auto` (f32 where the model fits that way, else stored).
    #[arg(long, global = true, value_name = "MODE", default_value = "auto",
          value_parser = circuit::model::WeightsMode::NAMES)]
    weights: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a model on prompts and print the most likely next tokens.
    Run(cli::run::Args),
    /// Parse and resolve .circuit files; report every error and warning.
    Check(cli::check::Args),
    /// Rewrite .circuit files in canonical form.
    Fmt(cli::fmt::Args),
    /// List, generate or inspect datasets.
    Dataset(cli::dataset::Args),
    /// Evaluate circuits: faithfulness against the full model and the empty circuit.
    Eval(cli::eval::Args),
    /// Run every `expect` in .circuit files as a test suite.
    Test(cli::test::Args),
    /// Attribution scores (eap, eap-ig, attention, qkvo, dla) of every head, MLP, QK edge or
    /// path edge, ranked.
    Scores(cli::scores::Args),
    /// Every head characterized on the file's dataset: previous-token, duplicate-token and
    /// induction scores, and with --features linalg its OV copying score and QK singular values.
    Heads(cli::heads::Args),
    /// The exact effect of ablating each head, MLP or QK edge alone, ranked; sharded with
    /// --shard i/N and joined with --merge.
    Scan(cli::scan::Args),
    /// Find a circuit reaching a target faithfulness: rank candidates by a score, check by exact
    /// evaluations, prune, and write it as a .circuit file.
    Discover(cli::discover::Args),
    /// Write a circuit in another tool's format (the EAP-IG / MIB graph JSON).
    Export(cli::export::Args),
    /// Compare two versions of a .circuit file: what changed and how the metrics moved.
    Diff(cli::diff::Args),
    /// Evaluate a .circuit file and draw it as a self-contained HTML page.
    Show(cli::show::Args),
    /// Show or clear the result cache (where it is, its entries and size).
    Cache(cli::cache::Args),
    /// Write an EAP-IG / MIB graph JSON as an edge-complete .circuit file.
    Import(cli::import::Args),
}

/// A closed stdout or stderr (`circuit run ... | head -1`) ends the program quietly, as it does
/// every Unix tool: Rust ignores SIGPIPE, so every `println!` into a closed pipe would panic.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first in `main`, before any thread starts; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    cli::progress::set_quiet(cli.quiet);
    circuit::model::set_weights_mode(
        circuit::model::WeightsMode::parse(&cli.weights).expect("clap checked the value"),
    );
    let result = match cli.command {
        Command::Run(args) => cli::run::execute(args),
        Command::Check(args) => cli::check::execute(args),
        Command::Fmt(args) => cli::fmt::execute(args),
        Command::Dataset(args) => cli::dataset::execute(args),
        Command::Eval(args) => cli::eval::execute(args),
        Command::Test(args) => cli::test::execute(args),
        Command::Scores(args) => cli::scores::execute(args),
        Command::Heads(args) => cli::heads::execute(args),
        Command::Scan(args) => cli::scan::execute(args),
        Command::Diff(args) => cli::diff::execute(args),
        Command::Discover(args) => cli::discover::execute(args),
        Command::Export(args) => cli::export::execute(args),
        Command::Show(args) => cli::show::execute(args),
        Command::Cache(args) => cli::cache::execute(args),
        Command::Import(args) => cli::import::execute(args),
    };
    match result {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(2)
        }
    }
}
