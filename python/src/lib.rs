//! `circuit._native`: the Python binding of the `circuit` library (docs/python.md).
//!
//! Every function here is argument conversion around a library call that the CLI makes too
//! (`src/cli/`); nothing is computed here. Three rules hold for every entry point, through
//! [`guarded`]:
//!
//! - the GIL is released while the library works (`Python::detach`), so other Python threads
//!   run during a forward or an evaluation;
//! - a Rust panic becomes a `circuit.CircuitError` (code `circuit::python::panic`), never an
//!   abort of the interpreter;
//! - a coded library error becomes a `circuit.CircuitError` carrying `.code`, `.message` and
//!   `.report` (the miette report as `circuit` prints it, without colour).
//!
//! Evaluations check for Ctrl-C after every forward batch ([`Session::set_interrupt`]) and
//! raise the `KeyboardInterrupt` Python's handler produced.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use circuit::attribute::run::{score_session, Request};
use circuit::attribute::{Granularity, Method};
use circuit::data::autocircuit::{import, ImportOptions};
use circuit::data::jsonl;
use circuit::discover::invocation::Invocation;
use circuit::measure::expect::{check_file, circuits_to_run};
use circuit::measure::file::run_circuits;
use circuit::measure::session::select_circuits;
use circuit::measure::{disk_cache, Session, SessionOptions};
use circuit::model::{ForwardOptions, ModelSource, NoInterventions};
use circuit::report::{FileReport, SettingsReport};
use circuit::resolve::{load_file, RealEnvironment, ResolveOptions, Resolved};
use circuit::syntax::Diagnostics;

pyo3::create_exception!(
    _native,
    CircuitError,
    PyException,
    "An error of circuit: `.code` (e.g. `circuit::resolve::unknown_head`), `.message`, `.report` (the rendered report), and for resolve errors `.diagnostics` (a list of dicts)."
);

/// Width diagnostics are wrapped to, as `circuit check` does.
const WIDTH: usize = 100;

/// Why a call failed, carried out of the GIL-free part of a call.
enum Failure {
    /// A coded error of the library.
    Report(miette::Report),
    /// The diagnostics of a file that does not resolve (every error of it).
    Diagnostics(Diagnostics),
    /// An exception Python raised while the work ran (the `KeyboardInterrupt` of a Ctrl-C).
    Python(PyErr),
}

impl From<miette::Report> for Failure {
    fn from(report: miette::Report) -> Failure {
        Failure::Report(report)
    }
}

type Outcome<T> = Result<T, Failure>;

/// A library error with a code (`Diagnostic`) as a [`Failure`].
fn coded<E: miette::Diagnostic + Send + Sync + 'static>(error: E) -> Failure {
    Failure::Report(miette::Report::new(error))
}

/// The report as `circuit` prints it on a terminal without colour.
fn render(report: &miette::Report) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(WIDTH);
    let mut out = String::new();
    match handler.render_report(&mut out, report.as_ref()) {
        Ok(()) => out,
        Err(_) => report.to_string(),
    }
}

/// A `CircuitError` with its attributes set.
fn circuit_error(
    py: Python<'_>,
    code: Option<String>,
    message: String,
    report: String,
    diagnostics: Option<Bound<'_, PyAny>>,
) -> PyErr {
    let error = CircuitError::new_err(message.clone());
    let value = error.value(py);
    // Setting attributes on a fresh exception instance cannot fail.
    let _ = value.setattr("code", code);
    let _ = value.setattr("message", message);
    let _ = value.setattr("report", report);
    let _ = value.setattr("diagnostics", diagnostics);
    error
}

impl Failure {
    fn into_py_err(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Python(error) => error,
            Failure::Report(report) => {
                let code = report.code().map(|c| c.to_string());
                let message = report.to_string();
                let rendered = render(&report);
                circuit_error(py, code, message, rendered, None)
            }
            Failure::Diagnostics(diagnostics) => {
                let first = diagnostics
                    .items
                    .iter()
                    .find(|d| d.is_error())
                    .or(diagnostics.items.first());
                let code = first.map(|d| d.code.to_string());
                let message = match first {
                    Some(d) if diagnostics.error_count() > 1 => format!(
                        "{} (and {} more errors)",
                        d.message,
                        diagnostics.error_count() - 1
                    ),
                    Some(d) => d.message.clone(),
                    None => "the file does not resolve".to_string(),
                };
                let list = diagnostics_to_py(py, &diagnostics).ok();
                circuit_error(py, code, message, diagnostics.render_plain(WIDTH), list)
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `work` without the GIL, with panics caught; failures become Python exceptions.
fn guarded<T: Send>(py: Python<'_>, work: impl FnOnce() -> Outcome<T> + Send) -> PyResult<T> {
    let result = py.detach(|| std::panic::catch_unwind(AssertUnwindSafe(work)));
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(failure)) => Err(failure.into_py_err(py)),
        Err(payload) => {
            let message = format!(
                "internal error (a bug in circuit, please report it): {}",
                panic_message(payload.as_ref())
            );
            let report = miette::miette!(code = "circuit::python::panic", "{message}");
            Err(Failure::Report(report).into_py_err(py))
        }
    }
}

/// JSON text (from the library's report writers) as Python objects, through Python's own
/// `json` module: the very objects `json.loads` gives for the CLI's output.
fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

fn diagnostics_to_py<'py>(
    py: Python<'py>,
    diagnostics: &Diagnostics,
) -> PyResult<Bound<'py, PyAny>> {
    let values: Vec<serde_json::Value> = diagnostics.items.iter().map(|d| d.to_json()).collect();
    json_to_py(py, &serde_json::Value::Array(values).to_string())
}

/// Resolves a `.circuit` file as the CLI does (src/cli/eval.rs `resolve`).
fn resolve(path: &Path, model: Option<&str>) -> Outcome<Resolved> {
    let options = ResolveOptions {
        model_override: model
            .map(|spec| ModelSource::parse(spec, Path::new("")))
            .transpose()
            .map_err(coded)?,
        overrides: Vec::new(),
    };
    load_file(path, &RealEnvironment, &options).map_err(Failure::Diagnostics)
}

/// The result cache the CLI uses (`$CIRCUIT_CACHE_DIR`, ...), or none.
fn session_options<'a>(cache: bool) -> Outcome<SessionOptions<'a>> {
    if !cache {
        return Ok(SessionOptions::default());
    }
    Ok(SessionOptions {
        disk_cache: disk_cache::cache_dir(),
        disk_cache_max_bytes: Some(disk_cache::cache_max_bytes().map_err(coded)?),
        ..Default::default()
    })
}

/// Opens a session whose forward batches end with a Ctrl-C check; a `KeyboardInterrupt` (or
/// whatever Python's SIGINT handler raised) is kept in `raised`.
fn open_session<'a>(
    resolved: &Resolved,
    cache: bool,
    raised: &'a Mutex<Option<PyErr>>,
) -> Outcome<Session<'a>> {
    let mut session = Session::open(&resolved.file, session_options(cache)?)?;
    session.set_interrupt(Box::new(move || {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(error) => {
                *raised.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                true
            }
        })
    }));
    Ok(session)
}

/// The failure of an interrupted evaluation is the exception Python raised.
fn interrupted(failure: Failure, raised: &Mutex<Option<PyErr>>) -> Failure {
    match raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
        Some(error) => Failure::Python(error),
        None => failure,
    }
}

/// `circuit.evaluate`: the JSON text `circuit eval --format json` prints.
#[pyfunction]
#[pyo3(signature = (path, circuits=Vec::new(), model=None, cache=true))]
fn evaluate_json(
    py: Python<'_>,
    path: PathBuf,
    circuits: Vec<String>,
    model: Option<String>,
    cache: bool,
) -> PyResult<String> {
    let resolved = guarded(py, || resolve(&path, model.as_deref()))?;
    warn_all(py, &resolved.warnings)?;
    guarded(py, || {
        let raised = Mutex::new(None);
        let run = (|| -> Outcome<_> {
            let selected = select_circuits(&resolved.file, &circuits)?;
            let mut session = open_session(&resolved, cache, &raised)?;
            Ok(run_circuits(&mut session, selected)?)
        })()
        .map_err(|f| interrupted(f, &raised))?;
        let report = FileReport::new(&path.display().to_string(), &resolved.file.settings, &run);
        Ok(report.to_json())
    })
}

/// Resolve warnings as Python warnings (`UserWarning`), rendered as `circuit check` prints them.
fn warn_all(py: Python<'_>, warnings: &Diagnostics) -> PyResult<()> {
    if warnings.is_empty() {
        return Ok(());
    }
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    let text = std::ffi::CString::new(warnings.render_plain(WIDTH).replace('\0', ""))?;
    PyErr::warn(py, &category, &text, 1)
}

/// `circuit.check`: the file's diagnostics (warnings; errors raise).
#[pyfunction]
#[pyo3(signature = (path, model=None))]
fn check<'py>(
    py: Python<'py>,
    path: PathBuf,
    model: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let resolved = guarded(py, || resolve(&path, model.as_deref()))?;
    diagnostics_to_py(py, &resolved.warnings)
}

/// `circuit.test` for one file: each expectation with its outcome, in file order.
#[pyfunction]
#[pyo3(signature = (path, model=None, cache=true))]
fn test_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    model: Option<String>,
    cache: bool,
) -> PyResult<Bound<'py, PyList>> {
    let resolved = guarded(py, || resolve(&path, model.as_deref()))?;
    warn_all(py, &resolved.warnings)?;
    let rows = guarded(py, || {
        let names = circuits_to_run(&resolved.file).map_err(coded)?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let raised = Mutex::new(None);
        let run = (|| -> Outcome<_> {
            let selected = select_circuits(&resolved.file, &names)?;
            let mut session = open_session(&resolved, cache, &raised)?;
            Ok(run_circuits(&mut session, selected)?)
        })()
        .map_err(|f| interrupted(f, &raised))?;
        Ok(check_file(&resolved.file, &run.evaluation)
            .into_iter()
            .map(|c| {
                (
                    c.circuit.to_string(),
                    c.expectation.text.clone(),
                    c.outcome.passed,
                    c.outcome.measured,
                )
            })
            .collect())
    })?;
    let list = PyList::empty(py);
    let file = path.display().to_string();
    for (circuit, expect, passed, measured) in rows {
        let row = PyDict::new(py);
        row.set_item("file", &file)?;
        row.set_item("circuit", circuit)?;
        row.set_item("expect", expect)?;
        row.set_item("passed", passed)?;
        row.set_item("measured", measured)?;
        list.append(row)?;
    }
    Ok(list)
}

/// The one of `all` the library names `name` (`Method::name`, `Granularity::name`); `what`
/// says which argument was wrong.
fn named<T: Copy>(
    what: &str,
    name: &str,
    all: &[T],
    name_of: fn(T) -> &'static str,
) -> PyResult<T> {
    all.iter()
        .copied()
        .find(|&x| name_of(x) == name)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|&x| name_of(x)).collect();
            PyValueError::new_err(format!(
                "unknown {what} {name:?}; one of: {}",
                names.join(", ")
            ))
        })
}

/// The `granularity` argument of `scores` and `discover`, as the CLI spells it.
fn named_granularity(name: &str) -> PyResult<Granularity> {
    let all = [
        Granularity::Nodes,
        Granularity::QkEdges,
        Granularity::PathEdges,
    ];
    named("granularity", name, &all, Granularity::name)
}

/// `circuit.scores`: the JSON text `circuit scores --format json` prints.
#[pyfunction]
#[pyo3(signature = (path, method="eap", granularity="nodes", circuit=None, steps=5, top=None, model=None, cache=true))]
#[allow(clippy::too_many_arguments)]
fn scores_json(
    py: Python<'_>,
    path: PathBuf,
    method: &str,
    granularity: &str,
    circuit: Option<String>,
    steps: usize,
    top: Option<usize>,
    model: Option<String>,
    cache: bool,
) -> PyResult<String> {
    let methods = [
        Method::Eap,
        Method::EapIg { steps },
        Method::Attention,
        Method::Qkvo,
        Method::Dla,
    ];
    let method = named("method", method, &methods, Method::name)?;
    let granularity = named_granularity(granularity)?;
    if top == Some(0) {
        return Err(PyValueError::new_err("top=0 would keep no score"));
    }
    let resolved = guarded(py, || resolve(&path, model.as_deref()))?;
    warn_all(py, &resolved.warnings)?;
    guarded(py, || {
        let relative_to = match &circuit {
            Some(name) => {
                Some(select_circuits(&resolved.file, std::slice::from_ref(name))?.remove(0))
            }
            None => None,
        };
        let raised = Mutex::new(None);
        let mut session = open_session(&resolved, cache, &raised)?;
        let request = Request {
            method,
            granularity,
            embed_edges: false,
        };
        let report = score_session(&mut session, request, relative_to.as_ref(), false, None)
            .map_err(|e| interrupted(Failure::Report(e), &raised))?;
        let settings = SettingsReport::new(session.settings(), session.provenance());
        Ok(circuit::report::scores::to_json(&report, &settings, top))
    })
}

/// `circuit.discover`: the JSON text `circuit discover --format json` prints (the found file's
/// text is its `circuit_text`), the found file written to `output` as the CLI writes it. The
/// checks, the found file and its write are the library's (`discover::invocation`), as the
/// CLI's are.
#[pyfunction]
#[pyo3(signature = (path, target, rank="eap-ig", steps=5, granularity="nodes", attention_threshold=None, circuit=None, output=None, force=false, best_effort=false, cache=true))]
#[allow(clippy::too_many_arguments)]
fn discover_json(
    py: Python<'_>,
    path: PathBuf,
    target: f64,
    rank: &str,
    steps: usize,
    granularity: &str,
    attention_threshold: Option<f64>,
    circuit: Option<String>,
    output: Option<PathBuf>,
    force: bool,
    best_effort: bool,
    cache: bool,
) -> PyResult<String> {
    // The ranks and granularities `circuit discover --rank/--granularity` takes.
    let ranks = [
        Method::EapIg { steps },
        Method::Eap,
        Method::Exact,
        Method::Qkvo,
        Method::Attention,
    ];
    let rank = named("rank", rank, &ranks, Method::name)?;
    let granularity = named_granularity(granularity)?;
    let scan_cache = match cache {
        true => guarded(py, || {
            let max_bytes = disk_cache::cache_max_bytes().map_err(coded)?;
            Ok(disk_cache::cache_dir().map(|dir| disk_cache::DiskCache { dir, max_bytes }))
        })?,
        false => None,
    };
    let invocation = Invocation {
        file: path.clone(),
        base: circuit,
        target,
        rank,
        granularity,
        attention_threshold,
        output,
        force,
        best_effort,
        scan_cache,
    };
    // Refused before the file is read, as the CLI refuses.
    guarded(py, || invocation.check().map_err(coded))?;
    let resolved = guarded(py, || resolve(&path, None))?;
    warn_all(py, &resolved.warnings)?;
    guarded(py, || {
        let prepared = invocation.prepare(&resolved.file, &[])?;
        let raised = Mutex::new(None);
        let run = (|| -> Outcome<_> {
            let mut session = open_session(&resolved, cache, &raised)?;
            let found = invocation.run(&mut session, &prepared, None)?;
            Ok((session, found))
        })()
        .map_err(|f| interrupted(f, &raised))?;
        let (session, found) = run;
        let text = invocation.found_file(&session, &found, &prepared)?;
        let settings = SettingsReport::new(session.settings(), session.provenance());
        let written = invocation.output.as_ref().map(|p| p.display().to_string());
        let report = circuit::discover::report::to_json(
            &found,
            &settings,
            session.provenance(),
            &path.display().to_string(),
            written.as_deref(),
            &text,
        );
        invocation.write(&text)?;
        Ok(report)
    })
}

/// `circuit.export_graph`: the JSON text `circuit export --format eap-ig-json` writes.
#[pyfunction]
#[pyo3(signature = (path, circuit, model=None))]
fn export_graph_json(
    py: Python<'_>,
    path: PathBuf,
    circuit: String,
    model: Option<String>,
) -> PyResult<String> {
    let resolved = guarded(py, || resolve(&path, model.as_deref()))?;
    warn_all(py, &resolved.warnings)?;
    guarded(py, || {
        let file = &resolved.file;
        let selected = select_circuits(file, std::slice::from_ref(&circuit))?.remove(0);
        let config = file.settings.model.config().map_err(coded)?;
        let graph = circuit::report::graph_json::circuit_graph(&selected, &file.settings, &config)
            .map_err(coded)?;
        Ok(graph.to_json())
    })
}

/// `circuit.import_prompts`: the JSONL text `circuit dataset import` writes; its notes become
/// Python warnings.
#[pyfunction]
#[pyo3(signature = (path, model=None, prepend_bos=true, drop=Vec::new()))]
fn import_prompts_jsonl(
    py: Python<'_>,
    path: PathBuf,
    model: Option<String>,
    prepend_bos: bool,
    drop: Vec<String>,
) -> PyResult<String> {
    let (text, notes) = guarded(py, || {
        let source = match &model {
            Some(spec) => ModelSource::parse(spec, Path::new("")).map_err(coded)?,
            None => ModelSource::default_model(),
        };
        let tokenizer = circuit::model::Tokenizer::open(&source).map_err(coded)?;
        let options = ImportOptions { prepend_bos, drop };
        let imported = import(&path, &tokenizer, &options).map_err(coded)?;
        Ok((jsonl::write(&imported.dataset), imported.notes))
    })?;
    let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
    for note in notes {
        PyErr::warn(
            py,
            &category,
            &std::ffi::CString::new(note.replace('\0', ""))?,
            1,
        )?;
    }
    Ok(text)
}

/// `circuit.format`: the canonical form of `.circuit` text (`circuit fmt`).
#[pyfunction]
#[pyo3(signature = (text, name="<string>"))]
fn format(py: Python<'_>, text: String, name: &str) -> PyResult<String> {
    let name = name.to_string();
    guarded(py, move || {
        let source = circuit::syntax::SourceFile::new(name, text);
        let file = circuit::syntax::parse(&source).map_err(Failure::Diagnostics)?;
        Ok(circuit::syntax::format_file(&file))
    })
}

/// A private hook for the tests: panics inside [`guarded`], to show a panic becomes an
/// exception and the interpreter lives on.
#[pyfunction]
fn _panic_for_test(py: Python<'_>, message: String) -> PyResult<()> {
    guarded(py, move || -> Outcome<()> { panic!("{message}") })
}

/// Token ids from Python: a 1-D `(T,)` or 2-D `(B, T)` integer numpy array, or a (nested) list
/// of ints. Anything else is a `TypeError`/`ValueError` naming what was given.
fn ids_from_py(ids: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    let array: Bound<'_, PyUntypedArray> = match ids.cast::<PyUntypedArray>() {
        Ok(array) => array.clone(),
        Err(_) => {
            // Lists (and other sequences) through numpy, so the same checks apply.
            let numpy = ids.py().import("numpy")?;
            numpy
                .call_method1("asarray", (ids,))?
                .cast_into::<PyUntypedArray>()
                .map_err(|_| PyTypeError::new_err("ids must be a numpy array or a list of ints"))?
        }
    };
    let dtype = array.dtype();
    let kind: char = dtype.getattr("kind")?.extract()?;
    if kind != 'i' && kind != 'u' {
        return Err(PyTypeError::new_err(format!(
            "ids must be an integer array (int64, int32, uint32, ...), got dtype {}",
            dtype.str()?
        )));
    }
    let shape = array.shape().to_vec();
    if !(shape.len() == 1 || shape.len() == 2) {
        return Err(PyValueError::new_err(format!(
            "ids must have shape (T,) or (B, T), got shape {shape:?}"
        )));
    }
    if shape.contains(&0) {
        return Err(PyValueError::new_err(format!(
            "ids must hold at least one token per prompt, got shape {shape:?}"
        )));
    }
    let as_i64 = array.call_method1("astype", ("int64",))?;
    let typed = as_i64
        .cast::<PyArrayDyn<i64>>()
        .map_err(|_| PyTypeError::new_err("ids could not be read as int64"))?;
    let view = typed.readonly();
    let view = view.as_array();
    let rows: Vec<Vec<i64>> = if shape.len() == 1 {
        vec![view.iter().copied().collect()]
    } else {
        view.outer_iter()
            .map(|r| r.iter().copied().collect())
            .collect()
    };
    rows.into_iter()
        .map(|row| {
            row.into_iter()
                .map(|id| {
                    u32::try_from(id).map_err(|_| {
                        PyValueError::new_err(format!("token id {id} is not a valid id"))
                    })
                })
                .collect()
        })
        .collect()
}

/// A model: a built-in name (`toy-seqcont`) or a HuggingFace folder, as `.circuit` files and
/// `--model` name it.
#[pyclass(frozen, module = "circuit")]
struct Model {
    inner: circuit::model::Model,
    name: String,
}

#[pymethods]
impl Model {
    #[new]
    fn new(py: Python<'_>, path_or_builtin: PathBuf) -> PyResult<Model> {
        let spec = path_or_builtin.display().to_string();
        let (inner, name) = guarded(py, || {
            let source = ModelSource::parse(&spec, Path::new("")).map_err(coded)?;
            let model = circuit::model::Model::open(&source).map_err(coded)?;
            Ok((model, source.display_name()))
        })?;
        Ok(Model { inner, name })
    }

    fn __repr__(&self) -> String {
        let c = &self.inner.config;
        format!(
            "circuit.Model({:?}: {} layers, {} heads, d_model {}, vocabulary {})",
            self.name, c.n_layers, c.n_heads, c.d_model, c.vocab_size
        )
    }

    /// The model's shape as a dict (`n_layers`, `n_heads`, `d_model`, `d_head`, ...).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.inner.config)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        json_to_py(py, &text)
    }

    /// Token ids `(T,)` (int64) of `text` as the model sees it (BOS added when its tokenizer
    /// adds one).
    fn tokenize<'py>(&self, py: Python<'py>, text: String) -> PyResult<Bound<'py, PyAny>> {
        let ids = guarded(py, || self.inner.encode_prompt(&text).map_err(coded))?;
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        Ok(ids.into_pyarray(py).into_any())
    }

    /// The text of each token id, as `circuit run` shows tokens.
    fn to_str_tokens(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let rows = ids_from_py(ids)?;
        if rows.len() != 1 {
            return Err(PyValueError::new_err("to_str_tokens takes one prompt (T,)"));
        }
        Ok(rows[0]
            .iter()
            .map(|&id| self.inner.tokenizer.decode(&[id]))
            .collect())
    }

    /// Logits `(B, T, V)` float32 at every position; with `cache=True` a pair `(logits, cache)`,
    /// the cache a dict of activations named as TransformerLens names them (docs/python.md).
    #[pyo3(signature = (ids, cache=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
        cache: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rows = ids_from_py(ids)?;
        let options = ForwardOptions {
            all_logits: true,
            cache,
        };
        let out = guarded(py, || {
            self.inner
                .forward(&rows, &options, &NoInterventions)
                .map_err(coded)
        })?;
        let logits = out.logits.into_pyarray(py).into_any(); // (B, T, V)
        let Some(activations) = out.cache else {
            return Ok(logits);
        };
        let dict = PyDict::new(py);
        // The cached q and k are after rotary wherever the family has it (every family but
        // GPT-2), which TransformerLens names `hook_rot_q` / `hook_rot_k`.
        let rotary = self.inner.config.rotary_dim > 0;
        let (q_name, k_name) = if rotary {
            ("attn.hook_rot_q", "attn.hook_rot_k")
        } else {
            ("attn.hook_q", "attn.hook_k")
        };
        for (l, layer) in activations.layers.into_iter().enumerate() {
            let name = |hook: &str| format!("blocks.{l}.{hook}");
            dict.set_item(name("hook_resid_pre"), layer.resid_pre.into_pyarray(py))?; // (B, T, D)
            dict.set_item(name(q_name), layer.q.into_pyarray(py))?; // (B, T, H, d)
            dict.set_item(name(k_name), layer.k.into_pyarray(py))?; // (B, T, Hkv, d)
            dict.set_item(name("attn.hook_v"), layer.v.into_pyarray(py))?; // (B, T, Hkv, d)
            dict.set_item(name("attn.hook_attn_scores"), layer.scores.into_pyarray(py))?; // (B, H, T, T)
            dict.set_item(name("attn.hook_pattern"), layer.pattern.into_pyarray(py))?; // (B, H, T, T)
            dict.set_item(name("attn.hook_z"), layer.z.into_pyarray(py))?; // (B, T, H, d)
            dict.set_item(name("attn.hook_result"), layer.head_out.into_pyarray(py))?; // (B, T, H, D)
            dict.set_item(name("hook_attn_out"), layer.attn_out.into_pyarray(py))?; // (B, T, D)
            dict.set_item(name("hook_resid_mid"), layer.resid_mid.into_pyarray(py))?; // (B, T, D)
            dict.set_item(name("hook_mlp_out"), layer.mlp_out.into_pyarray(py))?; // (B, T, D)
            dict.set_item(name("hook_resid_post"), layer.resid_post.into_pyarray(py))?;
            // (B, T, D)
        }
        Ok((logits, dict).into_pyobject(py)?.into_any())
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CircuitError", m.py().get_type::<CircuitError>())?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(evaluate_json, m)?)?;
    m.add_function(wrap_pyfunction!(check, m)?)?;
    m.add_function(wrap_pyfunction!(test_file, m)?)?;
    m.add_function(wrap_pyfunction!(scores_json, m)?)?;
    m.add_function(wrap_pyfunction!(format, m)?)?;
    m.add_function(wrap_pyfunction!(export_graph_json, m)?)?;
    m.add_function(wrap_pyfunction!(discover_json, m)?)?;
    m.add_function(wrap_pyfunction!(import_prompts_jsonl, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_test, m)?)?;
    Ok(())
}
