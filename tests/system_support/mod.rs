//! Programs some tests run that a fresh machine may lack (Chromium, GNU parallel): found on
//! `PATH`, or the test skips loudly, unless `CI` is set: there they must run (`.ci/run`
//! installs them and sets `CI`).
#![allow(dead_code)]

use std::path::PathBuf;

/// The first of `names` on `PATH`; `None` (with a loud message naming `what` the test could
/// not check and how to install the program) when none is there outside CI.
pub fn installed_program(names: &[&str], install: &str, what: &str) -> Option<PathBuf> {
    let found = names.iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var_os("CI").is_some() => {
            panic!(
                "CI is set but {} is not installed: .ci/run installs it ({install})",
                names[0]
            )
        }
        None => {
            // Written to the process's stderr, not through `eprintln!`, which the test harness
            // captures and hides for a passing test.
            use std::io::Write as _;
            let message = format!(
                "\n!!!!!! SKIPPED: {} is not installed, so {what} was not checked.\n!!!!!! Install it ({install}) to run this test; under CI=true it is required.\n\n",
                names[0]
            );
            let _ = std::io::stderr().write_all(message.as_bytes());
            None
        }
    }
}
