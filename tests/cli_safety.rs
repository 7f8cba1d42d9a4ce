//! The command line never harms a user's files or ends in a panic: closed pipes, outputs onto
//! inputs, symlinks, output folders checked before the work (issue 11).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn circuit(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env(
            "CIRCUIT_CACHE_DIR",
            std::env::temp_dir().join("circuit-cli-safety-cache"),
        )
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

fn run(args: &[&str]) -> Output {
    circuit(args).output().expect("the binary runs")
}

/// A pipe whose reading end is already closed: every write into it fails with EPIPE.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    writer.into()
}

/// Ended quietly: its own exit code, or killed by SIGPIPE as `cat`/`ls` are; never a panic.
fn ended_quietly(status: std::process::ExitStatus) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(SIGPIPE) {
            return true;
        }
    }
    matches!(status.code(), Some(0..=2))
}

#[cfg(unix)]
const SIGPIPE: i32 = 13; // the same on every Unix

/// Every command with output on stdout or stderr, written into a closed pipe: it ends quietly
/// (no panic, exit 101, or "Broken pipe" message on the other stream).
#[test]
fn every_command_ends_quietly_on_a_closed_pipe() {
    let friends = "tests/fixtures/eval/friends.circuit";
    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec![
            "run", "--prompt", "1 2 3", "--prompt", "4 5 6", "--top", "20",
        ],
        vec!["run", "--prompt", "1 2 3", "--json", "--logits"],
        vec!["check", "tests/fixtures/ok/warnings.circuit", friends],
        vec!["check", "--json", "tests/fixtures/ok/warnings.circuit"],
        vec!["check", "tests/fixtures/err/unknown_head.circuit"],
        vec![
            "fmt",
            "--check",
            "tests/fixtures/ok/comments.circuit",
            "tests/fixtures/ok/ioi.circuit",
        ],
        vec!["dataset", "--list"],
        vec!["dataset", "seqcont.numerals", "--n", "500"],
        vec!["dataset", "inspect", "seqcont.numerals"],
        vec!["eval", friends],
        vec!["eval", friends, "--json"],
        vec!["test", friends],
        vec![
            "diff",
            friends,
            "tests/fixtures/eval/bad/reference_length.circuit",
            "--no-eval",
        ],
        vec!["eval", "no/such/file.circuit"],
    ];
    for args in &commands {
        // stdout closed, stderr kept to read.
        let o = circuit(args)
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(
            ended_quietly(o.status) && !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?} with a closed stdout: {:?}\n{err}",
            o.status
        );
        // stderr closed, stdout kept (`circuit check x 2>&1 >/dev/null | head -c 100`).
        let o = circuit(args)
            .stdout(Stdio::piped())
            .stderr(closed_pipe())
            .output()
            .unwrap();
        assert!(
            ended_quietly(o.status),
            "{args:?} with a closed stderr: {:?}\n{}",
            o.status,
            text(&o.stdout)
        );
        // Both closed.
        let status = circuit(args)
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert!(
            ended_quietly(status),
            "{args:?} with both closed: {status:?}"
        );
    }
}
