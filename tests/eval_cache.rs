//! The disk cache never changes a number: a changed model config is a different key (issue 11.1),
//! a damaged or hand-edited entry is recomputed (11.4), and for any one change to a model's
//! config or weights a warm cache gives what the cache-off run gives, bit for bit.

mod eval_support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use circuit::measure::{AblationSettings, Evaluation, Evaluator, PromptMetrics};
use circuit::model::Model;
use circuit::resolve::bound::{AblationKind, BoundCircuit, EdgeAblation, Scope};
use eval_support::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_circuit");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Copies the files of a model folder (not subfolders) into `to`.
fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Sets `key` (a `/`-separated path into nested objects) of `dir/config.json` to `value`.
fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut slot = &mut json;
    for part in key.split('/') {
        slot = &mut slot[part];
    }
    *slot = value;
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

fn eval_json(args: &[&str], cache: &str) -> String {
    let o: Output = Command::new(BIN)
        .args(["eval", "--json"])
        .args(args)
        .env("CIRCUIT_CACHE_DIR", cache)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn toy_model_with_another_layer_norm_epsilon_is_not_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("toy");
    copy_model(&repo("models/toy-seqcont"), &model);
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let file = repo("circuits/toy-seqcont/letters_template.circuit");
    let args = [file.to_str().unwrap(), "--model", model.to_str().unwrap()];
    let before = eval_json(&args, cache);
    set_config(&model, "layer_norm_epsilon", 10.0.into());
    let cached = eval_json(&args, cache);
    let fresh = eval_json(&args, "off");
    assert_ne!(before, fresh, "the change must change the numbers");
    assert_eq!(cached, fresh);
}

#[test]
fn stories260k_with_another_rope_theta_is_not_read_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("stories260K");
    copy_model(&stories_dir(), &model);
    let fixtures = repo("tests/fixtures/eval");
    std::fs::copy(
        fixtures.join("friends.jsonl"),
        dir.path().join("friends.jsonl"),
    )
    .unwrap();
    let text = std::fs::read_to_string(fixtures.join("friends.circuit"))
        .unwrap()
        .replace("../../../../shared/models/stories260K", "stories260K");
    let file = dir.path().join("friends.circuit");
    std::fs::write(&file, text).unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let args = [file.to_str().unwrap()];
    let before = eval_json(&args, cache);
    set_config(&model, "rope_theta", 10.0.into());
    let cached = eval_json(&args, cache);
    let fresh = eval_json(&args, "off");
    assert_ne!(before, fresh, "the change must change the numbers");
    assert_eq!(cached, fresh);
}

// ---------------------------------------------------------------------------------------------
// Library level: an evaluator on a fixture model, with and without a cache folder.

struct Case {
    model: Model,
    data: HandData,
    settings: AblationSettings,
    circuits: Vec<BoundCircuit>,
}

/// A circuit with nodes, a QK edge (edge terms) and a path edge (per-head outputs), so the
/// reference entry holds every kind of array.
fn circuits() -> Vec<BoundCircuit> {
    let mut c = circuit("c");
    c.heads.insert(h(1, 0), at(&[end(0)]));
    c.heads.insert(h(0, 1), at(&[label("S1", 0), end(0)]));
    c.mlps.insert(0, at(&[end(0)]));
    c.qk_edges.push(edge(h(1, 0), label("S1", 0), end(0)));
    let mut d = circuit("d");
    d.heads
        .insert(h(0, 0), circuit::data::positions::PositionSet::All);
    d.path_edges.push(circuit::resolve::bound::PathEdge {
        from: circuit::resolve::bound::Upstream::Head(h(0, 0)),
        to: circuit::resolve::bound::Downstream::Logits,
        positions: at(&[end(0)]),
        span: 0..0,
    });
    vec![c, d]
}

fn gpt2_case(dir: &Path, ablation: AblationKind) -> Case {
    let model = Model::load(dir).unwrap();
    let mut data = random_data(300, 8, 6, 5, 11);
    data.reference.push(data.reference[0].clone()); // resample pairs one-to-one
    Case {
        model,
        data,
        settings: AblationSettings {
            ablation,
            edge_ablation: EdgeAblation::EdgeMean,
            scope: Scope::HeadsAndMlps,
        },
        circuits: circuits(),
    }
}

/// A fresh evaluator of `case` (no memo shared with other runs).
fn fresh_evaluator(case: &Case) -> Evaluator<'_> {
    Evaluator::new(
        &case.model,
        case.settings,
        case.data.eval_prompts(),
        case.data.reference.clone(),
    )
}

/// Evaluates `case`'s circuits, with the cache in `cache` when given; the cache notes go
/// into `notes`.
fn evaluate(case: &Case, cache: Option<&Path>, notes: &RefCell<Vec<String>>) -> Evaluation {
    let mut evaluator = fresh_evaluator(case);
    evaluator.batch_size = 4;
    evaluator.disk_cache = cache.map(Path::to_path_buf);
    evaluator.on_cache_note = Some(Box::new(|note: &str| {
        notes.borrow_mut().push(note.to_string())
    }));
    let circuits: Vec<&BoundCircuit> = case.circuits.iter().collect();
    evaluator.evaluate(&circuits).unwrap()
}

/// Every per-prompt value of every run as bits (NaN compares equal to itself).
/// Per run (full, empty, each circuit), per metric, the per-prompt values' bits.
type RunBits = Vec<(String, Vec<(String, Vec<u64>)>)>;

fn bits(e: &Evaluation) -> RunBits {
    let of = |m: &PromptMetrics| {
        m.iter()
            .map(|(k, v)| (format!("{k:?}"), v.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    let mut out = vec![
        ("full".to_string(), of(&e.full)),
        ("empty".into(), of(&e.empty)),
    ];
    out.extend(e.circuits.iter().map(|(n, m)| (n.clone(), of(m))));
    out
}

/// An entry file split into its three parts: magic line, header JSON, content.
struct EntryFile {
    magic: Vec<u8>,
    header: serde_json::Value,
    content: Vec<u8>,
}

fn split_entry(bytes: &[u8]) -> EntryFile {
    let first = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let second = first + bytes[first..].iter().position(|&b| b == b'\n').unwrap() + 1;
    EntryFile {
        magic: bytes[..first].to_vec(),
        header: serde_json::from_slice(&bytes[first..second - 1]).unwrap(),
        content: bytes[second..].to_vec(),
    }
}

/// The entry with its length and checksum made to match its (edited) content again, as a
/// careful hand edit would: only the shape checks can catch what is wrong with it then.
fn resigned(mut entry: EntryFile) -> Vec<u8> {
    entry.header["content_bytes"] = entry.content.len().into();
    entry.header["content_sha256"] = hex::encode(Sha256::digest(&entry.content)).into();
    let mut out = entry.magic;
    out.extend_from_slice(entry.header.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&entry.content);
    out
}

/// A tensor of a safetensors file: name, dtype, shape, little-endian bytes.
type Tensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// A reference values entry's content with `edit` applied to its tensors (name, dtype, shape,
/// little-endian bytes), rewritten as safetensors.
fn edit_tensors(content: &[u8], edit: &dyn Fn(&mut Vec<Tensor>)) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(content).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(content).unwrap();
    let mut tensors: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, meta.metadata().clone()).unwrap()
}

fn f32_edit(data: &mut [u8], f: impl Fn(f32) -> f32) {
    for c in data.chunks_exact_mut(4) {
        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        c.copy_from_slice(&f(x).to_le_bytes());
    }
}

type Corruption = (&'static str, fn(&[u8]) -> Vec<u8>);

/// Damage that no checksum was recomputed for: every one breaks the envelope.
const RAW: &[Corruption] = &[
    ("empty", |_| Vec::new()),
    ("truncated", |b| b[..b.len() / 2].to_vec()),
    ("last byte dropped", |b| b[..b.len() - 1].to_vec()),
    ("a bit flipped in the content", |b| {
        let mut b = b.to_vec();
        let i = b.len() - 5;
        b[i] ^= 0x10;
        b
    }),
    ("a bit flipped in the header", |b| {
        let mut b = b.to_vec();
        b[40] ^= 0x01;
        b
    }),
    ("bytes appended", |b| [b, b"0000".as_slice()].concat()),
    ("the shape in the header changed", |b| {
        let mut e = split_entry(b);
        e.header["shape"]["n_prompts"] = 5.into();
        resigned(e)
    }),
    ("the key in the header changed", |b| {
        let mut e = split_entry(b);
        e.header["key"] = "0".repeat(64).into();
        resigned(e)
    }),
    ("scaled values, checksum not recomputed", |b| {
        let mut e = split_entry(b);
        if e.header["kind"] == "reference" {
            e.content = edit_tensors(&e.content, &|ts| {
                for t in ts.iter_mut().filter(|t| t.1 == safetensors::Dtype::F32) {
                    f32_edit(&mut t.3, |x| x * 1.5);
                }
            });
        } else {
            let mut m: std::collections::BTreeMap<String, Vec<u64>> =
                serde_json::from_slice(&e.content).unwrap();
            for v in m.values_mut() {
                for x in v.iter_mut() {
                    *x = (f64::from_bits(*x) * 1.5).to_bits();
                }
            }
            e.content = serde_json::to_vec(&m).unwrap();
        }
        let mut out = e.magic;
        out.extend_from_slice(e.header.to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&e.content);
        out
    }),
];

/// Hand edits with the checksum made to match: the shape and index checks catch each.
const REFERENCE_RESIGNED: &[Corruption] = &[
    ("a z array with a source less", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let t = ts.iter_mut().find(|t| t.0 == "z.0").unwrap();
            let per_source = t.3.len() / t.2[0];
            t.2[0] -= 1;
            t.3.truncate(t.3.len() - per_source);
        });
        resigned(e)
    }),
    ("a layer dropped", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let last = ts.iter().filter(|t| t.0.starts_with("mlp_out.")).count() - 1;
            ts.retain(|t| t.0 != format!("mlp_out.{last}"));
        });
        resigned(e)
    }),
    ("a head's width changed", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let t = ts.iter_mut().find(|t| t.0 == "z.0").unwrap();
            let d = t.2[3];
            t.2[3] = 1;
            t.3 = t.3.chunks(4 * d).flat_map(|c| c[..4].to_vec()).collect();
        });
        resigned(e)
    }),
    ("source_of_prompt out of range", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let t = ts.iter_mut().find(|t| t.0 == "source_of_prompt").unwrap();
            t.3[..8].copy_from_slice(&1000u64.to_le_bytes());
        });
        resigned(e)
    }),
    ("source_of_prompt shortened", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let t = ts.iter_mut().find(|t| t.0 == "source_of_prompt").unwrap();
            t.2[0] -= 1;
            t.3.truncate(t.3.len() - 8);
        });
        resigned(e)
    }),
    ("a NaN", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            let t = ts.iter_mut().find(|t| t.0 == "mlp_out.0").unwrap();
            t.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        });
        resigned(e)
    }),
    ("an edge head's terms dropped", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| ts.retain(|t| !t.0.starts_with("edge.")));
        resigned(e)
    }),
    ("per-head outputs dropped", |b| {
        let mut e = split_entry(b);
        e.content = edit_tensors(&e.content, &|ts| {
            ts.retain(|t| !t.0.starts_with("head_out."))
        });
        resigned(e)
    }),
    ("not safetensors", |b| {
        let mut e = split_entry(b);
        e.content = b"{}".to_vec();
        resigned(e)
    }),
];

const METRICS_RESIGNED: &[Corruption] = &[
    ("a value dropped", |b| {
        let mut e = split_entry(b);
        let mut m: std::collections::BTreeMap<String, Vec<u64>> =
            serde_json::from_slice(&e.content).unwrap();
        m.values_mut().next().unwrap().pop();
        e.content = serde_json::to_vec(&m).unwrap();
        resigned(e)
    }),
    ("a metric dropped", |b| {
        let mut e = split_entry(b);
        let mut m: std::collections::BTreeMap<String, Vec<u64>> =
            serde_json::from_slice(&e.content).unwrap();
        m.remove("kl");
        e.content = serde_json::to_vec(&m).unwrap();
        resigned(e)
    }),
    ("not JSON", |b| {
        let mut e = split_entry(b);
        e.content = b"[1, 2".to_vec();
        resigned(e)
    }),
];

/// For every entry of a warm cache and every corruption of its kind: the run equals the
/// cache-off run bit for bit, the entry is reported as recomputed, and nothing panics.
fn corrupted_entries_are_recomputed(ablation: AblationKind) {
    let case = gpt2_case(&gpt2_tiny_dir(), ablation);
    let notes = RefCell::new(Vec::new());
    let expected = bits(&evaluate(&case, None, &notes));
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(bits(&evaluate(&case, Some(cache.path()), &notes)), expected);
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let n_reference = files
        .iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("reference-")
        })
        .count();
    assert_eq!(n_reference, 1, "{files:?}");
    assert!(files.len() >= 4, "full, empty and two circuits: {files:?}");
    for file in &files {
        let original = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap();
        let is_reference = name.to_str().unwrap().starts_with("reference-");
        let resigned = if is_reference {
            REFERENCE_RESIGNED
        } else {
            METRICS_RESIGNED
        };
        for (what, corrupt) in RAW.iter().chain(resigned) {
            // Reference values are read only by a plan whose metrics are not cached: the
            // reference entry is tested alone, a metrics entry among all the others.
            let scratch = tempfile::tempdir().unwrap();
            if !is_reference {
                for other in &files {
                    std::fs::copy(other, scratch.path().join(other.file_name().unwrap())).unwrap();
                }
            }
            let damaged = scratch.path().join(name);
            std::fs::write(&damaged, corrupt(&original)).unwrap();
            notes.borrow_mut().clear();
            let got = bits(&evaluate(&case, Some(scratch.path()), &notes));
            assert_eq!(got, expected, "{what} in {}", file.display());
            let notes = notes.borrow();
            assert!(
                notes.iter().any(|n| n.starts_with("recomputing:")),
                "{what} in {} was not reported: {notes:?}",
                file.display()
            );
            // Recomputed and rewritten.
            let rewritten = std::fs::read(&damaged).unwrap();
            assert_eq!(
                split_entry(&rewritten).content,
                split_entry(&original).content
            );
        }
    }
    // The untouched cache is read back whole: no forward pass.
    let mut evaluator = fresh_evaluator(&case);
    evaluator.disk_cache = Some(cache.path().to_path_buf());
    let circuits: Vec<&BoundCircuit> = case.circuits.iter().collect();
    assert_eq!(bits(&evaluator.evaluate(&circuits).unwrap()), expected);
    assert_eq!(evaluator.forward_passes, 0);
}

#[test]
fn corrupted_entries_are_recomputed_under_mean_ablation() {
    corrupted_entries_are_recomputed(AblationKind::Mean);
}

#[test]
fn corrupted_entries_are_recomputed_under_resample_ablation() {
    corrupted_entries_are_recomputed(AblationKind::Resample);
}

#[test]
fn least_recently_used_entries_are_evicted_past_the_bound() {
    let case = gpt2_case(&gpt2_tiny_dir(), AblationKind::Mean);
    let notes = RefCell::new(Vec::new());
    let cache = tempfile::tempdir().unwrap();
    evaluate(&case, Some(cache.path()), &notes);
    let sizes: Vec<u64> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    let total: u64 = sizes.iter().sum();
    // A bound of what the cache holds now: the next entry written evicts the least recently
    // used one (a circuit's metrics, which this run does not read).
    let mut evaluator = fresh_evaluator(&case);
    evaluator.disk_cache = Some(cache.path().to_path_buf());
    evaluator.disk_cache_max_bytes = total;
    evaluator.on_cache_note = Some(Box::new(|note: &str| {
        notes.borrow_mut().push(note.to_string())
    }));
    notes.borrow_mut().clear();
    let mut other = circuit("other");
    other
        .heads
        .insert(h(2, 2), circuit::data::positions::PositionSet::All);
    evaluator.evaluate(&[&other]).unwrap();
    let after: u64 = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(after <= total, "{after} > {total}");
    assert!(
        notes.borrow().iter().any(|n| n.starts_with("evicted ")),
        "{:?}",
        notes.borrow()
    );
    // The entries this run read (full, empty, reference) were refreshed and stay.
    let kept = RefCell::new(Vec::new());
    let mut again = fresh_evaluator(&case);
    again.disk_cache = Some(cache.path().to_path_buf());
    again.on_cache_note = Some(Box::new(|note: &str| {
        kept.borrow_mut().push(note.to_string())
    }));
    again.evaluate(&[&other]).unwrap();
    assert_eq!(again.forward_passes, 0, "{:?}", kept.borrow());
}

// ---------------------------------------------------------------------------------------------
// The property: one change to a fixture model's config or weights, and a cache warmed on the
// fixture gives the numbers of a cache-off run.

/// Config values the engine reads, each with values it accepts.
fn config_change(llama: bool) -> BoxedStrategy<(String, serde_json::Value)> {
    let eps = prop_oneof![Just(1e-3), Just(0.5), Just(10.0)];
    if llama {
        prop_oneof![
            eps.prop_map(|x| ("rms_norm_eps".to_string(), x.into())),
            prop_oneof![Just(10.0), Just(10000.0), Just(1.5)]
                .prop_map(|x| ("rope_parameters/rope_theta".to_string(), x.into())),
            Just(("max_position_embeddings".to_string(), 32.into())),
        ]
        .boxed()
    } else {
        prop_oneof![
            eps.prop_map(|x| ("layer_norm_epsilon".to_string(), x.into())),
            Just((
                "activation_function".to_string(),
                "gelu_pytorch_tanh".into()
            )),
            Just(("bos_token_id".to_string(), 1.into())),
        ]
        .boxed()
    }
}

#[derive(Clone, Debug)]
enum Change {
    Config(String, serde_json::Value),
    /// Flip the lowest bit of element `element` (mod its size) of tensor `tensor` (mod count).
    Tensor {
        tensor: usize,
        element: usize,
    },
}

fn change(llama: bool) -> impl Strategy<Value = Change> {
    prop_oneof![
        config_change(llama).prop_map(|(k, v)| Change::Config(k, v)),
        (0usize..1000, 0usize..100_000)
            .prop_map(|(tensor, element)| Change::Tensor { tensor, element }),
    ]
}

fn apply(dir: &Path, change: &Change) {
    match change {
        Change::Config(key, value) => set_config(dir, key, value.clone()),
        Change::Tensor { tensor, element } => {
            let path = dir.join("model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            let edited = edit_tensors(&bytes, &|ts| {
                let n = ts.len();
                let t = &mut ts[tensor % n];
                let width = t.1.bitsize() / 8;
                let i = (element % (t.3.len() / width)) * width;
                t.3[i] ^= 1; // lowest mantissa bit, little-endian: never a NaN from a weight
            });
            std::fs::write(&path, edited).unwrap();
        }
    }
}

fn warm_cache_equals_cache_off(fixture: &Path, llama: bool) {
    let cache = tempfile::tempdir().unwrap();
    let notes = RefCell::new(Vec::new());
    evaluate(
        &gpt2_case(fixture, AblationKind::Mean),
        Some(cache.path()),
        &notes,
    );
    let config = ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(change in change(llama))| {
        let dir = tempfile::tempdir().unwrap();
        copy_model(fixture, dir.path());
        apply(dir.path(), &change);
        let case = gpt2_case(dir.path(), AblationKind::Mean);
        let warm = bits(&evaluate(&case, Some(cache.path()), &notes));
        let off = bits(&evaluate(&case, None, &notes));
        prop_assert_eq!(warm, off, "{:?}", change);
    });
}

#[test]
fn one_change_to_gpt2_tiny_and_a_warm_cache_equals_the_cache_off_run() {
    warm_cache_equals_cache_off(&gpt2_tiny_dir(), false);
}

#[test]
fn one_change_to_a_llama_and_a_warm_cache_equals_the_cache_off_run() {
    warm_cache_equals_cache_off(&repo("tests/fixtures/models/llama-gqa-bf16"), true);
}

// ---------------------------------------------------------------------------------------------
// The cache from the command line: `circuit cache info|clear`, `--no-cache`, `--verbose`.

fn circuit_cmd(args: &[&str], cache: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("CIRCUIT_CACHE_DIR", cache)
        .env_remove("CIRCUIT_CACHE_MAX_BYTES")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn letters() -> String {
    repo("circuits/toy-seqcont/letters_template.circuit")
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn cache_info_and_clear_show_and_empty_the_folder_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let o = circuit_cmd(&["eval", &letters(), "--json"], &cache);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert!(entries >= 3, "reference, full, empty and the circuits");
    std::fs::write(cache.join("notes.txt"), "mine").unwrap();

    let info = circuit_cmd(&["cache", "info"], &cache);
    let out = text(&info.stdout);
    assert!(info.status.success(), "{}", text(&info.stderr));
    assert!(
        out.contains(&format!("location  {}", cache.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("entries   {entries} (1 reference values")),
        "{out}"
    );
    assert!(out.contains("bound     2.0 GiB"), "{out}");

    let clear = circuit_cmd(&["cache", "clear"], &cache);
    let out = text(&clear.stdout);
    assert!(clear.status.success(), "{}", text(&clear.stderr));
    assert!(
        out.starts_with(&format!("removed {entries} entries")),
        "{out}"
    );
    let left: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(left.len(), 1, "only notes.txt stays");
    assert!(cache.join("notes.txt").exists());
    let info = circuit_cmd(&["cache", "info"], &cache);
    assert!(
        text(&info.stdout).contains("entries   0 "),
        "{}",
        text(&info.stdout)
    );
}

#[test]
fn no_cache_neither_reads_nor_writes_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let off = circuit_cmd(&["eval", &letters(), "--json", "--no-cache"], &cache);
    assert!(off.status.success(), "{}", text(&off.stderr));
    assert!(!cache.exists(), "--no-cache wrote the cache");
    let on = circuit_cmd(&["eval", &letters(), "--json"], &cache);
    assert!(cache.exists());
    assert_eq!(text(&on.stdout), text(&off.stdout));
    for command in ["eval", "test", "diff"] {
        let help = circuit_cmd(&[command, "--help"], &cache);
        let out = text(&help.stdout);
        assert!(
            out.contains("--no-cache") && out.contains("CIRCUIT_CACHE_DIR"),
            "{command}: {out}"
        );
    }
}

#[test]
fn verbose_says_which_entry_was_damaged_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = circuit_cmd(&["eval", &letters(), "--json"], &cache);
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().contains("metrics-"))
        .unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x04;
    std::fs::write(&entry, bytes).unwrap();
    let again = circuit_cmd(&["eval", &letters(), "--json", "--verbose"], &cache);
    let err = text(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert_eq!(text(&again.stdout), text(&first.stdout));
    assert!(
        err.contains("cache: recomputing: ") && err.contains("checksum does not match"),
        "{err}"
    );
    assert!(err.contains("cache: read "), "{err}");
}

#[test]
fn an_unreadable_cache_bound_is_a_coded_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["eval", &letters()])
        .env("CIRCUIT_CACHE_DIR", dir.path())
        .env("CIRCUIT_CACHE_MAX_BYTES", "lots")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("circuit::cache::max_bytes"),
        "{}",
        text(&o.stderr)
    );
}

/// Under `align by label` reference values have one source per slot layout and as many
/// positions as the longest evaluated prompt: an entry written by one run verifies in the next.
#[test]
fn label_aligned_reference_values_are_read_back() {
    use circuit::measure::file::run_file;
    use circuit::measure::SessionOptions;
    use circuit::resolve::{resolve_source, RealEnvironment, ResolveOptions};
    let source = r#"
model "toy-seqcont"
dataset d = "uneven.jsonl"
reference d.corrupt
ablate heads and mlps by mean
metric logit_diff
align by label

circuit one {
  0.0, 0.1 @ END, S4
  edge 0.0: S4 -> END
  mlp 0 @ END
}

circuit two {
  0.0, 1.0 @ END, S4
  edge 0.0: S4 -> END
  mlp 1 @ END
}
"#;
    let resolved = resolve_source(
        "align.circuit",
        source,
        &repo("tests/fixtures/eval/align"),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    let cache = tempfile::tempdir().unwrap();
    let notes = RefCell::new(Vec::new());
    let run = |names: &[&str], cache: Option<&Path>| {
        let options = SessionOptions {
            disk_cache: cache.map(Path::to_path_buf),
            on_cache_note: Some(Box::new(|note: &str| {
                notes.borrow_mut().push(note.to_string())
            })),
            ..SessionOptions::default()
        };
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        run_file(&resolved.file, &names, options)
            .unwrap()
            .evaluation
    };
    run(&["one"], Some(cache.path()));
    notes.borrow_mut().clear();
    let cached = run(&["two"], Some(cache.path()));
    assert!(
        notes.borrow().iter().any(|n| n == "read reference values"),
        "{:?}",
        notes.borrow()
    );
    assert!(
        !notes.borrow().iter().any(|n| n.starts_with("recomputing")),
        "{:?}",
        notes.borrow()
    );
    assert_eq!(bits(&cached), bits(&run(&["two"], None)));
}
