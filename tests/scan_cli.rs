//! `circuit scan` through the binary: shards merged (by hand, under GNU parallel) equal the
//! unsharded scan; the cache lets an interrupted scan resume and leaves no partial output;
//! `scores --method exact` prints the scan's numbers; bad requests are coded errors.

mod cli_support;
mod system_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{assert_fails, circuit, command, root, stderr, stdout};

const TOY: &str = "circuits/toy-seqcont/numerals_template.circuit";
const STORIES: &str = "tests/fixtures/eval/friends.circuit";

fn ok(args: &[&str]) -> String {
    let out = circuit(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

#[test]
fn shards_merged_equal_the_unsharded_scan_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let whole_json = ok(&["scan", TOY, "--format", "json", "--no-cache"]);
    let whole_text = ok(&["scan", TOY, "--top", "30", "--no-cache"]);
    let whole_svg = path(dir.path(), "whole.svg");
    ok(&["scan", TOY, "--svg", &whole_svg, "--no-cache"]);
    let mut parts = Vec::new();
    for i in 1..=3 {
        let part = path(dir.path(), &format!("part-{i}.json"));
        ok(&[
            "scan",
            TOY,
            "--shard",
            &format!("{i}/3"),
            "-o",
            &part,
            "--no-cache",
        ]);
        parts.push(part);
    }
    let mut merge: Vec<&str> = vec!["scan", "--merge"];
    merge.extend(parts.iter().rev().map(String::as_str)); // any order
    let merged_json = ok(&[merge.clone(), vec!["--format", "json"]].concat());
    assert_eq!(merged_json, whole_json);
    assert!(whole_json.contains("\"method\": \"exact\""));
    let merged_text = ok(&[merge.clone(), vec!["--top", "30"]].concat());
    assert_eq!(merged_text, whole_text);
    let merged_svg = path(dir.path(), "merged.svg");
    ok(&[merge, vec!["--svg", &merged_svg]].concat());
    assert_eq!(
        std::fs::read(&merged_svg).unwrap(),
        std::fs::read(&whole_svg).unwrap()
    );
}

/// The GNU parallel line of docs/tutorial.md ("Exact scans"), run as written there (from a
/// folder holding `parts/`), then merged.
#[test]
fn the_documented_gnu_parallel_line_gives_the_unsharded_scan() {
    let Some(_) = system_support::installed_program(
        &["parallel"],
        "apt-get install parallel",
        "the tutorial's GNU parallel line",
    ) else {
        return;
    };
    let line =
        "parallel circuit --quiet scan FILE.circuit --shard {}/4 -o parts/part-{}.json ::: 1 2 3 4";
    let tutorial = std::fs::read_to_string(root().join("docs/tutorial.md")).unwrap();
    assert!(tutorial.contains(line), "docs/tutorial.md shows the line");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("parts")).unwrap();
    let file = root().join(TOY);
    let line = line.replace("FILE.circuit", file.to_str().unwrap());
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_circuit")).parent().unwrap();
    let status = Command::new("bash")
        .args(["-c", &line])
        .current_dir(dir.path())
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("CIRCUIT_CACHE_DIR", "off")
        .status()
        .expect("bash runs");
    assert!(status.success(), "{line}");
    let parts: Vec<String> = (1..=4)
        .map(|i| path(&dir.path().join("parts"), &format!("part-{i}.json")))
        .collect();
    let mut merge: Vec<&str> = vec!["scan", "--format", "json", "--merge"];
    merge.extend(parts.iter().map(String::as_str));
    let whole = ok(&["scan", TOY, "--format", "json", "--no-cache"]);
    assert_eq!(ok(&merge), whole);
}

#[test]
fn scores_method_exact_prints_the_scan() {
    let scan = ok(&["scan", TOY, "--format", "json", "--no-cache"]);
    let scores = ok(&["scores", TOY, "--method", "exact", "--format", "json"]);
    assert_eq!(scores, scan);
    let relative = ok(&[
        "scores",
        TOY,
        "--method",
        "exact",
        "--circuit",
        "movers_nodes",
        "--query",
        "END",
    ]);
    assert!(
        relative.contains("relative to circuit movers_nodes"),
        "{relative}"
    );
    assert!(relative.contains("mlp 0 @ END"), "{relative}");
    assert!(
        !relative.contains("@ S4"),
        "--query END keeps END only: {relative}"
    );
}

/// Entry files of kind `metrics` in a cache folder (the session's and the scan's blocks).
fn metric_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("metrics-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn an_interrupted_scan_writes_no_output_and_resumes_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = path(dir.path(), "scan.json");
    let args = [
        "scan",
        STORIES,
        "--granularity",
        "qk-edges",
        "--format",
        "json",
        "-o",
        &out,
    ];
    let mut child = command(&args)
        .env("CIRCUIT_CACHE_DIR", &cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once some blocks of results are cached (the session's own entries for the
    // full model and the empty circuit come first).
    let started = Instant::now();
    while metric_entries(&cache) < 6 {
        assert!(child.try_wait().unwrap().is_none(), "the scan ended first");
        assert!(started.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a plain signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!Path::new(&out).exists(), "no partial output");
    let resumed = command(&[&args[..], &["--verbose"]].concat())
        .env("CIRCUIT_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let note = stderr(&resumed);
    let read: usize = note
        .lines()
        .find_map(|l| {
            l.strip_prefix("cache: read ")?
                .strip_suffix(" scanned candidates from the cache")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the resumed scan reads the cache: {note}"));
    assert!(read > 0 && read < 16240, "{read} of 16240 read");
    let fresh = ok(&[&args[..6], &["--no-cache"]].concat());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), fresh);
}

#[test]
fn progress_has_an_eta_off_a_terminal() {
    let out = command(&["scan", TOY, "--no-cache"])
        .env("CIRCUIT_PROGRESS_SECONDS", "0")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("prompt runs") && err.contains("left"),
        "progress lines: {err}"
    );
}

#[test]
fn bad_requests_are_coded_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = path(dir.path(), "out.json");
    for shard in ["3/2", "0/2", "1/0", "two", "1-2"] {
        assert_fails(
            &["scan", TOY, "--shard", shard, "-o", &out],
            2,
            "circuit::scan::bad_shard",
        );
    }
    assert_fails(&["scan", TOY, "--top", "0"], 2, "circuit::scan::top_zero");
    assert_fails(
        &["scores", TOY, "--method", "exact", "--top", "0"],
        2,
        "circuit::scores::top_zero",
    );
    let err = assert_fails(
        &["scan", TOY, "--circuit", "movers_node", "-o", &out],
        2,
        "circuit::eval::unknown_circuit",
    );
    assert!(err.contains("movers_nodes"), "did you mean: {err}");
    assert_fails(
        &["scan", STORIES, "--granularity", "mlps"],
        2,
        "circuit::scan::mlps_out_of_scope",
    );
    assert_fails(
        &[
            "scan",
            TOY,
            "--shard",
            "1/2",
            "--svg",
            &path(dir.path(), "a.svg"),
        ],
        2,
        "circuit::scan::shard_output",
    );
    assert_fails(
        &[
            "scores",
            TOY,
            "--method",
            "exact",
            "--granularity",
            "path-edges",
        ],
        2,
        "circuit::scan::path_edges",
    );
    assert!(!Path::new(&out).exists());

    // Parts of two different scans, an incomplete set, a part given twice, not a part.
    let toy = path(dir.path(), "toy-1.json");
    let toy_2 = path(dir.path(), "toy-2.json");
    let other = path(dir.path(), "other-2.json");
    ok(&["scan", TOY, "--shard", "1/2", "-o", &toy, "--no-cache"]);
    ok(&["scan", TOY, "--shard", "2/2", "-o", &toy_2, "--no-cache"]);
    ok(&[
        "scan",
        TOY,
        "--granularity",
        "mlps",
        "--shard",
        "2/2",
        "-o",
        &other,
        "--no-cache",
    ]);
    let merged = path(dir.path(), "merged.txt");
    assert_fails(
        &["scan", "--merge", &toy, &other, "-o", &merged],
        2,
        "circuit::scan::merge_mismatch",
    );
    assert_fails(
        &["scan", "--merge", &toy, "-o", &merged],
        2,
        "circuit::scan::merge_incomplete",
    );
    assert_fails(
        &["scan", "--merge", &toy, &toy, &toy_2, "-o", &merged],
        2,
        "circuit::scan::merge_incomplete",
    );
    assert_fails(
        &["scan", "--merge", &toy, TOY, "-o", &merged],
        2,
        "circuit::scan::not_a_part",
    );
    assert!(!Path::new(&merged).exists());
    // The good pair merges.
    ok(&["scan", "--merge", &toy_2, &toy, "-o", &merged]);
    assert!(std::fs::read_to_string(&merged)
        .unwrap()
        .contains("exact scores of nodes"));
}
