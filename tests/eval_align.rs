//! `align by label` end to end on the built-in toy model: identical to `align by position` when
//! every prompt has its labels at the same token indices (node, QK-edge and path-edge circuits,
//! mean and resample), working where prompts differ in length, and the errors when they cannot
//! be aligned.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use circuit::measure::file::{run_file, FileRun};
use circuit::measure::SessionOptions;
use circuit::measure::{PromptMetrics, ALL_METRICS};
use circuit::resolve::{resolve_source, ResolveOptions};
use circuit::resolve::{RealEnvironment, Severity};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/align")
}

fn run(source: &str) -> miette::Result<FileRun> {
    let resolved = resolve_source(
        "align.circuit",
        source,
        &fixtures(),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render_plain(100)));
    run_file(&resolved.file, &[], SessionOptions::default())
}

/// Nodes, QK edges and path edges, with the heads that move the last member (see
/// circuits/toy-seqcont/numerals_template.circuit).
const CIRCUITS: &str = r#"
heads movers = 0.0..3, 1.0

circuit nodes {
  movers @ END
  mlp 0 @ S1, S2, S3, S4, END
  mlp 1, 2 @ END
}

circuit qk_edges {
  movers @ END, S4
  edge movers: S4 -> END, S3 -> S4
  mlp 0 @ S1, S2, S3, S4, END
  mlp 1, 2 @ END
}

circuit path_edges {
  movers @ *
  mlp 0..2 @ *
  edge movers -> mlp 2 @ END
  edge 0.0, 0.2, mlp 1 -> logits
}
"#;

fn header(dataset: &str, reference: &str, ablation: &str, align: &str) -> String {
    format!(
        "model \"toy-seqcont\"\ndataset d = {dataset}\nreference {reference}\nablate heads and mlps by {ablation}\nmetric logit_diff\nalign by {align}\n"
    )
}

fn all_metrics(m: &PromptMetrics) -> Vec<Vec<f64>> {
    ALL_METRICS.iter().map(|k| m[k].clone()).collect()
}

#[test]
fn label_alignment_equals_position_alignment_when_labels_sit_at_the_same_indices() {
    // Template numerals: 23 tokens per prompt under the built-in tokenizer, S1..S4 at the
    // same indices in every prompt, END its own anchor. Bare numerals ("1 2 3 4"): S4 and END
    // share the last token, which the tie rule names END.
    let datasets = [
        r#"seqcont.numerals(n = 12, seed = 3, form = "template")"#,
        "seqcont.numerals(n = 12, seed = 3)",
    ];
    for (dataset, ablation) in datasets
        .iter()
        .flat_map(|d| ["mean", "resample"].map(move |a| (d, a)))
    {
        let by = |align: &str| {
            run(&format!(
                "{}{CIRCUITS}",
                header(dataset, "d.corrupt", ablation, align)
            ))
            .unwrap()
            .evaluation
        };
        let (label, position) = (by("label"), by("position"));
        assert_eq!(all_metrics(&label.full), all_metrics(&position.full));
        assert_eq!(
            all_metrics(&label.empty),
            all_metrics(&position.empty),
            "{dataset} {ablation}: empty circuit"
        );
        for name in ["nodes", "qk_edges", "path_edges"] {
            let (l, p) = (
                label.circuit(name).unwrap(),
                position.circuit(name).unwrap(),
            );
            assert_eq!(
                all_metrics(l),
                all_metrics(p),
                "{dataset} {ablation}: {name}"
            );
            // Not trivially the full model or the empty circuit.
            let f = label
                .scores(name, circuit::resolve::bound::Metric::LogitDiff)
                .unwrap()
                .faithfulness
                .unwrap();
            assert!(
                f > 0.05 && (f - 1.0).abs() > 1e-3,
                "{dataset} {ablation} {name}: {f}"
            );
        }
    }
}

#[test]
fn label_alignment_evaluates_prompts_of_different_token_lengths() {
    // Two of the four clean and two of the four reference prompts have an extra word ("Then")
    // before S2: 23 and 24 tokens.
    let source = format!(
        "{}{CIRCUITS}",
        header("\"uneven.jsonl\"", "d.corrupt", "mean", "label")
    );
    let run = run(&source).unwrap();
    for name in ["nodes", "qk_edges", "path_edges"] {
        let scores = run
            .evaluation
            .scores(name, circuit::resolve::bound::Metric::LogitDiff)
            .unwrap();
        let f = scores.faithfulness.unwrap();
        assert!(f.is_finite() && f > 0.05, "{name}: {f}");
    }
    // The empty circuit really ablated something.
    let full = &run.evaluation.full[&circuit::resolve::bound::Metric::LogitDiff];
    let empty = &run.evaluation.empty[&circuit::resolve::bound::Metric::LogitDiff];
    assert!(full.iter().zip(empty).all(|(f, e)| (f - e).abs() > 1e-3));

    // By position the same file stops before any forward pass, pointing to `align by label`.
    let err = self::run(&source.replace("align by label", "align by position"))
        .err()
        .unwrap();
    let code = err.code().map(|c| c.to_string()).unwrap_or_default();
    assert_eq!(code, "circuit::data::reference_length");
    assert!(err.help().unwrap().to_string().contains("`align by label`"));
}

/// A clean prompt with "Then" before S2 whose reference set has no such prompt: its token
/// after `S1.` (`S1+2` = "Then" … `S1+5`) has no counterpart.
const UNCOVERED: &str = r#"{"template": "Coat done in {S1}. Then Door done in {S2}. Rock done in {S3}. Ring done in {S4}. Cat done in", "fillers": {"S1": "56", "S2": "57", "S3": "58", "S4": "59"}, "answer": " 60", "distractor": " 59", "reference": {"template": "Coat done in {S1}. Door done in {S2}. Rock done in {S3}. Ring done in {S4}. Cat done in", "fillers": {"S1": "49", "S2": "80", "S3": "90", "S4": "16"}}}
{"template": "Cake done in {S1}. Boat done in {S2}. Book done in {S3}. Coat done in {S4}. Hat done in", "fillers": {"S1": "63", "S2": "64", "S3": "65", "S4": "66"}, "answer": " 67", "distractor": " 66", "reference": {"fillers": {"S1": "56", "S2": "6", "S3": "20", "S4": "88"}}}
"#;

#[test]
fn a_slot_missing_from_the_reference_set_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("uncovered.jsonl");
    std::fs::write(&data, UNCOVERED).unwrap();
    let dataset = format!("{:?}", data.to_str().unwrap());
    for ablation in ["mean", "resample"] {
        let source = format!(
            "{}{CIRCUITS}",
            header(&dataset, "d.corrupt", ablation, "label")
        );
        let err = run(&source).err().unwrap();
        let code = err.code().map(|c| c.to_string()).unwrap_or_default();
        assert_eq!(code, "circuit::ablate::slot_missing_from_reference");
        let text = err.to_string();
        let partner = match ablation {
            "mean" => "none of the 2 reference prompts has a token at that slot",
            _ => "its resample partner, reference prompt 0 (\"Coat done in 49. Door done in 80. Rock done in 90. Ring done in 16. Cat done in\"), has no token at that slot",
        };
        assert_eq!(
            text,
            format!("prompt 0 (\"Coat done in 56. Then Door done in 57. Rock done in 58. Ring done in 59. Cat done in\"): token 8 is at slot S1+5 under `align by label`, but {partner}"),
            "{ablation}"
        );
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_circuit"))
        .args(args)
        .env("CIRCUIT_CACHE_DIR", "off")
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

#[test]
fn cli_eval_aligns_by_label_where_position_alignment_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let data = fixtures().join("uneven.jsonl");
    let dataset = format!("{:?}", data.to_str().unwrap());
    let write = |align: &str| {
        let path = dir.path().join(format!("uneven_{align}.circuit"));
        let text = format!("{}{CIRCUITS}", header(&dataset, "d.corrupt", "mean", align));
        std::fs::write(&path, text).unwrap();
        path
    };
    let by_label = cli(&["eval", write("label").to_str().unwrap(), "--json"]);
    let stderr = String::from_utf8_lossy(&by_label.stderr);
    assert!(by_label.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&by_label.stdout).unwrap();
    let text = json.to_string();
    assert!(text.contains("\"alignment\":\"label\""), "{text}");
    assert!(text.contains("\"qk_edges\""), "{text}");

    let by_position = cli(&["eval", write("position").to_str().unwrap()]);
    assert!(!by_position.status.success());
    let stderr = String::from_utf8_lossy(&by_position.stderr);
    assert!(
        stderr.contains("circuit::data::reference_length"),
        "{stderr}"
    );
    assert!(
        stderr.contains("23 tokens") && stderr.contains("24 tokens"),
        "{stderr}"
    );
    assert!(stderr.contains("align by label"), "{stderr}");

    // A slot the reference set lacks: the rendered diagnostic names it and says what to do.
    let uncovered = dir.path().join("uncovered.jsonl");
    std::fs::write(&uncovered, UNCOVERED).unwrap();
    let path = dir.path().join("uncovered.circuit");
    let dataset = format!("{:?}", uncovered.to_str().unwrap());
    std::fs::write(
        &path,
        format!(
            "{}{CIRCUITS}",
            header(&dataset, "d.corrupt", "mean", "label")
        ),
    )
    .unwrap();
    let missing = cli(&["eval", path.to_str().unwrap()]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("circuit::ablate::slot_missing_from_reference"),
        "{stderr}"
    );
    assert!(stderr.contains("slot S1+5"), "{stderr}");
    assert!(stderr.contains("same templates"), "{stderr}");
}

/// Replaces MLP `layer`'s output at the given token of each prompt (batch of one) by a vector.
struct ReplaceMlp {
    layer: usize,
    token: usize,
    value: Vec<f32>,
}

impl circuit::model::Interventions for ReplaceMlp {
    fn edit_mlp_out(&self, layer: usize, mlp_out: &mut ndarray::ArrayViewMut3<f32>) {
        // mlp_out: (1, T, D)
        if layer == self.layer {
            for (dst, &x) in mlp_out
                .slice_mut(ndarray::s![0, self.token, ..])
                .iter_mut()
                .zip(&self.value)
            {
                *dst = x;
            }
        }
    }
}

#[test]
fn the_label_aligned_mean_is_the_mean_over_reference_tokens_at_the_same_slot() {
    use circuit::model::{ForwardOptions, Model, ModelSource, NoInterventions};
    use circuit::resolve::bound::Metric;
    // Only MLP 1 at S2+1 (the "." after S2) is ablated: token 10 in the prompts with "Then"
    // before S2, token 9 in the others.
    let source = format!(
        "{}circuit all_but_one_mlp {{\n  0.*, 1.*, 2.* @ *\n  mlp 0, 2 @ *\n  mlp 1 @ S1-3..S2, S2+2..END\n}}\n",
        header("\"uneven.jsonl\"", "d.corrupt", "mean", "label")
    );
    let run = run(&source).unwrap();
    let got = &run.evaluation.circuit("all_but_one_mlp").unwrap()[&Metric::LogitDiff];

    // The same by hand: MLP 1's output at S2+1 of every reference prompt, averaged, then put
    // in place of each clean prompt's own, one prompt at a time.
    let model = Model::open(&ModelSource::default_model()).unwrap();
    let dataset = circuit::data::load(&circuit::data::DatasetSource::File(
        fixtures().join("uneven.jsonl"),
    ))
    .unwrap();
    let tokenized = circuit::data::tokenize_dataset(&dataset, &model.tokenizer).unwrap();
    let after_s2 = |p: &circuit::data::TokenizedPrompt| p.slots["S2"].last + 1;
    let cache = ForwardOptions {
        all_logits: false,
        cache: true,
    };
    let mut sum = vec![0f64; model.config.d_model];
    let mut ref_tokens = Vec::new();
    for p in &tokenized.reference {
        let out = model
            .forward(std::slice::from_ref(&p.ids), &cache, &NoInterventions)
            .unwrap();
        let mlp = &out.cache.unwrap().layers[1].mlp_out; // (1, T, D)
        ref_tokens.push(after_s2(p));
        for (s, &x) in sum
            .iter_mut()
            .zip(mlp.slice(ndarray::s![0, after_s2(p), ..]))
        {
            *s += x as f64;
        }
    }
    assert_eq!(
        ref_tokens,
        [9, 10, 9, 10],
        "the reference prompts differ in length"
    );
    let n = tokenized.reference.len() as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    for (b, p) in tokenized.clean.iter().enumerate() {
        let hooks = ReplaceMlp {
            layer: 1,
            token: after_s2(p),
            value: mean.clone(),
        };
        let out = model
            .forward(
                std::slice::from_ref(&p.ids),
                &ForwardOptions::default(),
                &hooks,
            )
            .unwrap();
        let logits = out.logits.slice(ndarray::s![0, 0, ..]);
        let (answer, distractor) = p.targets().unwrap();
        let expected = logits[answer as usize] as f64 - logits[distractor as usize] as f64;
        assert!(
            (got[b] - expected).abs() < 1e-5,
            "prompt {b}: {} vs {expected}",
            got[b]
        );
        // And the ablation changed something.
        assert!((got[b] - run.evaluation.full[&Metric::LogitDiff][b]).abs() > 1e-4);
    }
}

/// Two evaluated prompts of one template, then `set: "reference"` lines: with `labelled`, as
/// the clean records are written (slots, answer, distractor); without, bare prompts.
fn unpaired(labelled: bool) -> String {
    let template =
        "Cake done in {S1}. Boat done in {S2}. Book done in {S3}. Coat done in {S4}. Hat done in";
    let fill = |n: [u32; 4]| {
        format!(
            r#""template": "{template}", "fillers": {{"S1": "{}", "S2": "{}", "S3": "{}", "S4": "{}"}}"#,
            n[0], n[1], n[2], n[3]
        )
    };
    let mut out = String::new();
    for n in [[63, 64, 65, 66], [21, 22, 23, 24]] {
        out += &format!(
            "{{{}, \"answer\": \" {}\", \"distractor\": \" {}\"}}\n",
            fill(n),
            n[3] + 1,
            n[3]
        );
    }
    for n in [[56, 6, 20, 88], [49, 80, 90, 16], [61, 35, 6, 76]] {
        out += &if labelled {
            format!(
                "{{{}, \"answer\": \" 1\", \"distractor\": \" 2\", \"set\": \"reference\"}}\n",
                fill(n)
            )
        } else {
            let prompt = template
                .replace("{S1}", &n[0].to_string())
                .replace("{S2}", &n[1].to_string())
                .replace("{S3}", &n[2].to_string())
                .replace("{S4}", &n[3].to_string());
            format!("{{\"prompt\": {prompt:?}, \"set\": \"reference\"}}\n")
        };
    }
    out
}

#[test]
fn unpaired_reference_prompts_need_labels_only_under_align_by_label_and_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let source = |labelled: bool, ablation: &str, align: &str| {
        let path = dir.path().join(format!("unpaired_{labelled}.jsonl"));
        std::fs::write(&path, unpaired(labelled)).unwrap();
        let dataset = format!("{:?}", path.to_str().unwrap());
        format!(
            "{}{CIRCUITS}",
            header(&dataset, "d.corrupt", ablation, align)
        )
    };
    // By position no reference label or answer is read: bare reference prompts resolve (the
    // circuits name S1..S4) and give the numbers of the same prompts with labels and answers.
    for ablation in ["mean", "zero"] {
        let bare = run(&source(false, ablation, "position")).unwrap();
        let labelled = run(&source(true, ablation, "position")).unwrap();
        for name in ["nodes", "qk_edges", "path_edges"] {
            assert_eq!(
                all_metrics(bare.evaluation.circuit(name).unwrap()),
                all_metrics(labelled.evaluation.circuit(name).unwrap()),
                "{ablation} {name}"
            );
        }
    }
    // By label the reference prompts' labels are read: a bare one is an error naming the
    // prompt, the label and the setting that reads it; `check` finds it (at `align by label`)...
    let message = "reference prompt 0 (\"Cake done in 56. Boat done in 6. Book done in 20. Coat done in 88. Hat done in\") has no label `S1`, which every evaluated prompt has; `align by label` reads it (reference statistics are matched per labelled slot)";
    let diagnostics = resolve_source(
        "align.circuit",
        &source(false, "mean", "label"),
        &fixtures(),
        &RealEnvironment,
        &ResolveOptions::default(),
    )
    .unwrap_err();
    let error = diagnostics
        .items
        .iter()
        .find(|d| d.severity == Severity::Error)
        .unwrap();
    assert_eq!(error.code, "circuit::resolve::reference");
    assert_eq!(error.message, message);
    // ... and so does evaluation, before any forward pass, for whoever evaluates unchecked.
    let path = dir.path().join("unpaired_false.jsonl");
    let dataset = circuit::data::load(&circuit::data::DatasetSource::File(path)).unwrap();
    let model = circuit::model::Model::open(&circuit::model::ModelSource::default_model()).unwrap();
    let tokenized = circuit::data::tokenize_dataset(&dataset, &model.tokenizer).unwrap();
    let err = circuit::data::check_reference(
        circuit::data::Pairing::Pooled,
        true,
        &tokenized.clean,
        &tokenized.reference,
    )
    .unwrap_err();
    assert_eq!(
        miette::Diagnostic::code(&err)
            .map(|c| c.to_string())
            .as_deref(),
        Some("circuit::data::reference_label")
    );
    assert_eq!(err.to_string(), message);
    // By position the same prompts pass the check.
    circuit::data::check_reference(
        circuit::data::Pairing::Pooled,
        false,
        &tokenized.clean,
        &tokenized.reference,
    )
    .unwrap();
    // Labelled reference prompts without answers are fine by label too.
    let no_answers = unpaired(true).replace(", \"answer\": \" 1\", \"distractor\": \" 2\"", "");
    std::fs::write(dir.path().join("unpaired_true.jsonl"), no_answers).unwrap();
    let path = dir.path().join("unpaired_true.jsonl");
    let dataset = format!("{:?}", path.to_str().unwrap());
    let text = format!(
        "{}{CIRCUITS}",
        header(&dataset, "d.corrupt", "mean", "label")
    );
    run(&text).unwrap();
}
