//! Models by HuggingFace hub name, offline: `--model gpt2` and `model "org/name"` resolve
//! through a local hub cache (`HF_HUB_CACHE`, then `HF_HOME/hub`, then
//! `~/.cache/huggingface/hub`) laid out as huggingface_hub lays it out; a name found nowhere
//! says where it looked and how to download it. The caches here are built in a temporary folder
//! from the committed fixture model, with files symlinked into `blobs/` as the hub makes them.

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{command, fixture, stderr, stdout};

/// A hub cache under `root` holding `name` (`org/name` or `name`): the fixture GPT-2's files
/// as blobs, a snapshot of symlinks to them, and `refs/main` naming the snapshot.
fn fake_cache(root: &Path, name: &str) -> PathBuf {
    let repo = root.join(format!("models--{}", name.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(revision);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for (i, file) in ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .enumerate()
    {
        // Blobs are named by their hash in a real cache; any unique name does here.
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(fixture("models/gpt2-tiny").join(file), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(file)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), revision).unwrap();
    snapshot
}

/// `circuit ARGS` in `dir` with exactly the hub variables given (HOME pointed at `home`).
fn run_in(dir: &Path, home: &Path, vars: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = command(args);
    c.current_dir(dir)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HOME")
        .env("HOME", home);
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn gpt2_tiny_prediction() -> String {
    let o = command(&[
        "run",
        "--model",
        fixture("models/gpt2-tiny").to_str().unwrap(),
        "--prompt",
        "Hello there",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn a_hub_name_resolves_through_each_cache_location_in_order() {
    let expected = gpt2_tiny_prediction();
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let args = ["run", "--model", "org/tiny", "--prompt", "Hello there"];

    // $HF_HUB_CACHE.
    let hub = tempfile::tempdir().unwrap();
    fake_cache(hub.path(), "org/tiny");
    let o = run_in(
        work.path(),
        home.path(),
        &[("HF_HUB_CACHE", hub.path())],
        &args,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected);

    // $HF_HOME/hub.
    let hf_home = tempfile::tempdir().unwrap();
    fake_cache(&hf_home.path().join("hub"), "org/tiny");
    let o = run_in(
        work.path(),
        home.path(),
        &[("HF_HOME", hf_home.path())],
        &args,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected);

    // ~/.cache/huggingface/hub, and a name without an organisation (`gpt2`).
    fake_cache(&home.path().join(".cache/huggingface/hub"), "gpt2");
    let o = run_in(
        work.path(),
        home.path(),
        &[],
        &["run", "--model", "gpt2", "--prompt", "Hello there"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected);
}

#[test]
fn a_circuit_files_model_setting_takes_a_hub_name_and_a_folder_of_that_name_wins() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let hub = tempfile::tempdir().unwrap();
    fake_cache(hub.path(), "EleutherAI/pythia-70m");
    let file = work.path().join("c.circuit");
    std::fs::write(
        &file,
        "model \"EleutherAI/pythia-70m\"\n\ncircuit c {\n  2.4 @ END\n}\n",
    )
    .unwrap();
    let check = |vars: &[(&str, &Path)]| {
        run_in(
            work.path(),
            home.path(),
            vars,
            &["check", "c.circuit", "--format", "json"],
        )
    };
    // The cached fixture has 3 layers × 5 heads, so head 2.4 exists (the built-in default's
    // 4 heads per layer would not have it).
    let o = check(&[("HF_HUB_CACHE", hub.path())]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    // Without the cache the name is found nowhere.
    let o = check(&[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("circuit::resolve::model"),
        "{}",
        stdout(&o)
    );

    // A folder of that name next to the file is a folder, whatever the cache holds: here one
    // with the built-in model's config (4 heads per layer), so 2.4 does not exist.
    let folder = work.path().join("EleutherAI/pythia-70m");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        cli_support::root().join("models/toy-seqcont/config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    let o = check(&[("HF_HUB_CACHE", hub.path())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("circuit::resolve::unknown_head"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_name_found_nowhere_says_where_it_looked_and_how_to_download_it() {
    let work = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let hub = tempfile::tempdir().unwrap();
    let hf_home = tempfile::tempdir().unwrap();
    let o = run_in(
        work.path(),
        home.path(),
        &[("HF_HUB_CACHE", hub.path()), ("HF_HOME", hf_home.path())],
        &["run", "--model", "org/absent", "--prompt", "x"],
    );
    assert_eq!(o.status.code(), Some(2));
    // miette wraps long lines (with a `│` margin); compare without spaces and margins.
    let flat = |text: &str| -> String {
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '│')
            .collect()
    };
    let err = flat(&stderr(&o));
    assert!(err.contains("circuit::model::not_found"), "{err}");
    for looked in [
        hub.path().join("models--org--absent"),
        hf_home.path().join("hub/models--org--absent"),
        home.path()
            .join(".cache/huggingface/hub/models--org--absent"),
    ] {
        let looked = flat(&looked.display().to_string());
        assert!(err.contains(&looked), "{looked} in {err}");
    }
    assert!(
        err.contains(&flat("`huggingface-cli download org/absent`")),
        "{err}"
    );
    assert!(err.contains(&flat("`hf download org/absent`")), "{err}");

    // In a .circuit file: the resolver's error at the `model` line, same words.
    std::fs::write(
        work.path().join("c.circuit"),
        "model \"org/absent\"\n\ncircuit c {\n  0.0 @ END\n}\n",
    )
    .unwrap();
    let o = run_in(
        work.path(),
        home.path(),
        &[("HF_HUB_CACHE", hub.path())],
        &["check", "c.circuit"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("circuit::resolve::model"), "{err}");
    assert!(err.contains("model `org/absent` not found"), "{err}");
    assert!(err.contains("huggingface-cli download"), "{err}");

    // A path is never looked up in the cache.
    let o = run_in(
        work.path(),
        home.path(),
        &[("HF_HUB_CACHE", hub.path())],
        &["run", "--model", "../no/such", "--prompt", "x"],
    );
    let err = stderr(&o);
    assert!(err.contains("circuit::model::not_found"), "{err}");
    assert!(!err.contains("HuggingFace cache (looked"), "{err}");
}
