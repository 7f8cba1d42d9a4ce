//! `circuit eval`.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn execute(_args: Args) -> miette::Result<ExitCode> {
    Err(miette::miette!("`circuit eval` is not implemented yet"))
}
