//! `circuit fmt`: rewrite `.circuit` files in canonical form.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use miette::{miette, IntoDiagnostic};

use circuit::syntax::{format_file, parse, SourceFile};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files to format in place; `-` reads standard input and writes standard output.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Change nothing; exit 1 and list the files that are not formatted.
    #[arg(long)]
    pub check: bool,
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let color = std::io::stderr().is_terminal();
    let mut failed = false;
    let mut unformatted = Vec::new();
    for path in &args.files {
        let from_stdin = path.as_os_str() == "-";
        let (name, text) = if from_stdin {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .into_diagnostic()?;
            ("<stdin>".to_string(), text)
        } else {
            let text = std::fs::read_to_string(path).map_err(|e| {
                miette!(
                    code = "circuit::fmt::read",
                    "cannot read {}: {e}",
                    path.display()
                )
            })?;
            (path.display().to_string(), text)
        };
        let source = SourceFile::new(name.clone(), text.clone());
        let file = match parse(&source) {
            Ok(file) => file,
            Err(diagnostics) => {
                for d in &diagnostics.items {
                    let rendered = if color {
                        d.render_colored(100)
                    } else {
                        d.render_plain(100)
                    };
                    eprintln!("{rendered}");
                }
                failed = true;
                continue;
            }
        };
        let formatted = format_file(&file);
        if args.check {
            if formatted != text {
                unformatted.push(name);
            }
        } else if from_stdin {
            std::io::stdout()
                .write_all(formatted.as_bytes())
                .into_diagnostic()?;
        } else if formatted != text {
            circuit::util::write_atomic(path, formatted.as_bytes()).map_err(|e| {
                miette!(
                    code = "circuit::fmt::write",
                    "cannot write {}: {e}",
                    path.display()
                )
            })?;
        }
    }
    for name in &unformatted {
        println!("{name}");
    }
    if !unformatted.is_empty() {
        eprintln!(
            "{} file{} not formatted; run `circuit fmt` on {}",
            unformatted.len(),
            if unformatted.len() == 1 {
                " is"
            } else {
                "s are"
            },
            if unformatted.len() == 1 { "it" } else { "them" }
        );
    }
    Ok(if failed || !unformatted.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
