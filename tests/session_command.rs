//! The "Adding a command" example of docs/architecture.md, compiled and run: a command that
//! evaluates plans on a [`Session`] in under 30 lines. The test checks that the doc shows this
//! file's example verbatim, that it is short, and that its numbers are those `circuit eval`'s
//! path (`Session::evaluate`) gives for the same circuits.

// example: begin
use std::path::PathBuf;

use circuit::measure::{scores, session::select_circuits, Session, SessionOptions};
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions};

/// `circuit drop-one FILE --circuit NAME`: a circuit's faithfulness with each head removed.
#[derive(clap::Parser, Debug)]
pub struct Args {
    pub file: PathBuf,
    #[arg(long = "circuit")]
    pub circuit: String,
}

pub fn execute(args: Args) -> miette::Result<String> {
    let resolved = load_file(&args.file, &RealEnvironment, &ResolveOptions::default())
        .map_err(miette::Report::new)?;
    let circuit = select_circuits(&resolved.file, &[args.circuit])?.remove(0);
    let mut session = Session::open(&resolved.file, SessionOptions::default())?;
    let metric = session.settings().metric;
    let full = session.run(&session.full_plan())?;
    let empty = session.run(&session.empty_plan())?;
    let mut out = String::new();
    for head in circuit.heads.keys() {
        let mut smaller = circuit.clone();
        smaller.heads.remove(head);
        smaller.qk_edges.retain(|edge| edge.head != *head);
        let m = session.run(&session.compile(&smaller)?)?;
        let f = scores(&full[&metric], &m[&metric], &empty[&metric]).faithfulness;
        out.push_str(&format!("without {head}: faithfulness {f:?}\n"));
    }
    Ok(out)
}
// example: end

use clap::Parser;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/eval/friends.circuit"
    ))
}

fn example() -> String {
    let source = include_str!("session_command.rs");
    let start = source.find("// example: begin\n").unwrap() + "// example: begin\n".len();
    let end = source.find("// example: end").unwrap();
    source[start..end].to_string()
}

#[test]
fn the_architecture_doc_shows_this_example_and_it_is_short() {
    let doc = include_str!("../docs/architecture.md");
    let code = example();
    assert!(
        doc.contains(&format!("```rust\n{code}```")),
        "docs/architecture.md must show tests/session_command.rs's example verbatim"
    );
    let lines = code.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(lines <= 30, "the example is {lines} lines");
}

#[test]
fn the_example_command_gives_the_numbers_eval_gives() {
    let args = Args::try_parse_from(["drop-one", fixture().to_str().unwrap(), "--circuit", "base"])
        .unwrap();
    let printed = execute(args).unwrap();

    // The same circuits evaluated the way `circuit eval` does, in a fresh session.
    let resolved = load_file(&fixture(), &RealEnvironment, &ResolveOptions::default()).unwrap();
    let base = select_circuits(&resolved.file, &["base".to_string()])
        .unwrap()
        .remove(0);
    let smaller: Vec<_> = base
        .heads
        .keys()
        .map(|head| {
            let mut c = base.clone();
            c.name = format!("without {head}");
            c.heads.remove(head);
            c.qk_edges.retain(|edge| edge.head != *head);
            c
        })
        .collect();
    let mut session = Session::open(&resolved.file, SessionOptions::default()).unwrap();
    let evaluation = session
        .evaluate(&smaller.iter().collect::<Vec<_>>())
        .unwrap();
    let metric = resolved.file.settings.metric;
    let expected: String = smaller
        .iter()
        .map(|c| {
            let f = evaluation.scores(&c.name, metric).unwrap().faithfulness;
            format!("{}: faithfulness {f:?}\n", c.name)
        })
        .collect();
    assert_eq!(printed, expected);
    assert_eq!(printed.lines().count(), base.heads.len());
    // Each plan is one pass: full, empty, one per head (the reference pass comes first).
    assert_eq!(session.forward_passes(), 3 + smaller.len());
}
