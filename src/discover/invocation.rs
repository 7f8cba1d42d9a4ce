//! One `circuit discover` run as its front ends (the CLI, src/cli/discover.rs, and the Python
//! package's `circuit.discover`) make it: the arguments, checked against the resolved file
//! before any model is loaded ([`Invocation::prepare`]), and afterwards the found file's text,
//! verified, and its atomic write ([`Invocation::found_file`], [`Invocation::write`]). The front
//! ends only open the session (with their progress bar or Ctrl-C check), call [`discover`] and
//! print, so both give the same bytes for the same arguments.

use std::path::{Path, PathBuf};

use super::{check_request, discover, output, DiscoverError, Discovery, Request};
use crate::attribute::{Granularity, Method};
use crate::measure::disk_cache::DiskCache;
use crate::measure::error::EvalError;
use crate::measure::file::unknown_circuit;
use crate::measure::Session;
use crate::resolve::bound::BoundFile;
use crate::util::outputs::{check_outputs, Output};

/// The arguments of `circuit discover` (docs/semantics.md, "Discovery").
#[derive(Clone, Debug)]
pub struct Invocation {
    /// The `.circuit` file whose settings define the search.
    pub file: PathBuf,
    /// `--circuit BASE`: search only inside this circuit of the file.
    pub base: Option<String>,
    pub target: f64,
    pub rank: Method,
    pub granularity: Granularity,
    pub attention_threshold: Option<f64>,
    /// `-o`: where the found file is written.
    pub output: Option<PathBuf>,
    /// Overwrite an existing `-o` file.
    pub force: bool,
    pub best_effort: bool,
    /// Where `--rank exact`'s scan caches its blocks (`None`: not cached).
    pub scan_cache: Option<DiskCache>,
}

/// A checked invocation: the request for [`discover`] and the input file's text.
pub struct Prepared {
    pub request: Request,
    pub input_text: String,
}

/// The error for an existing output without `force`.
fn exists(path: &Path) -> miette::Report {
    miette::miette!(
        code = "circuit::discover::output_exists",
        help = "pass --force to overwrite it, or write to another file",
        "{} exists; discover does not overwrite a file without --force",
        path.display()
    )
}

/// The folder a path is in (`.` for a bare file name).
fn folder(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl Invocation {
    /// The request without its base circuit, for the checks that need no file
    /// ([`check_request`]): every refusal that can be made before the file is read.
    pub fn check(&self) -> Result<(), DiscoverError> {
        check_request(&self.request(None))
    }

    fn request(&self, base: Option<crate::resolve::bound::BoundCircuit>) -> Request {
        Request {
            target: self.target,
            rank: self.rank,
            granularity: self.granularity,
            attention_threshold: self.attention_threshold,
            base,
            best_effort: self.best_effort,
            scan_cache: self.scan_cache.clone(),
        }
    }

    /// Everything refused before the model is loaded, against the resolved `file`: the base
    /// circuit (did-you-mean under discover's own code; path edges are not searched), the rank
    /// for the file's metric, and the outputs (`-o` and the front end's `extra_outputs`, such as
    /// `--svg`: not onto an input, an existing `-o` only with `force`).
    pub fn prepare(&self, file: &BoundFile, extra_outputs: &[Output]) -> miette::Result<Prepared> {
        self.check()?;
        let mut request = self.request(None);
        if let Some(name) = &self.base {
            let Some(base) = file.circuits.iter().find(|c| &c.name == name) else {
                let help = match unknown_circuit(file, name) {
                    EvalError::UnknownCircuit { help, .. } => help,
                    other => other.to_string(),
                };
                return Err(DiscoverError::UnknownBase {
                    name: name.clone(),
                    help,
                }
                .into());
            };
            request.base = Some(base.clone());
            check_request(&request)?;
        }
        // The exact scan is defined for every metric and granularity searched here.
        if self.rank != Method::Exact {
            crate::attribute::check_request(
                self.rank,
                self.granularity,
                crate::measure::metric_name(file.settings.metric),
                false,
            )?;
        }
        let mut inputs = vec![self.file.clone()];
        inputs.extend(file.settings.input_paths());
        let mut outputs: Vec<Output> = self
            .output
            .as_deref()
            .map(|path| Output { flag: "-o", path })
            .into_iter()
            .collect();
        outputs.extend(extra_outputs.iter().map(|o| Output {
            flag: o.flag,
            path: o.path,
        }));
        check_outputs(&outputs, &inputs)?;
        if let Some(path) = &self.output {
            if path.exists() && !self.force {
                return Err(exists(path));
            }
        }
        let input_text = std::fs::read_to_string(&self.file).map_err(|e| {
            miette::miette!(
                code = "circuit::check::read",
                "cannot read {}: {e}",
                self.file.display()
            )
        })?;
        Ok(Prepared {
            request,
            input_text,
        })
    }

    /// Runs the search on an opened session of the file ([`discover`]).
    pub fn run(
        &self,
        session: &mut Session,
        prepared: &Prepared,
        on_evaluation: Option<&dyn Fn(usize)>,
    ) -> miette::Result<Discovery> {
        discover(session, &prepared.request, on_evaluation)
    }

    /// The found `.circuit` file's text (paths relative to the output's folder, or the input's
    /// without `-o`), checked to compile to the very plan that was evaluated.
    pub fn found_file(
        &self,
        session: &Session,
        found: &Discovery,
        prepared: &Prepared,
    ) -> miette::Result<String> {
        let input_dir = folder(&self.file);
        let out_dir = self.output.as_deref().map_or(input_dir.clone(), folder);
        let text = output::circuit_file(
            found,
            &prepared.input_text,
            &input_dir,
            &out_dir,
            &self.command_line(),
        )?;
        output::verify(session, found, &text, &out_dir)?;
        Ok(text)
    }

    /// Writes the found file to `-o` (atomically), if there is one; checked again for an
    /// existing file, which may have appeared during the search.
    pub fn write(&self, text: &str) -> miette::Result<()> {
        let Some(path) = &self.output else {
            return Ok(());
        };
        if path.exists() && !self.force {
            return Err(exists(path));
        }
        crate::util::write_atomic(path, text.as_bytes()).map_err(|e| {
            miette::miette!(
                code = "circuit::discover::write",
                "cannot write {}: {e}",
                path.display()
            )
        })
    }

    /// The command as the found file's header records it (the file by its name).
    pub fn command_line(&self) -> String {
        let mut parts = vec![
            "circuit discover".to_string(),
            self.file
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        ];
        if let Some(c) = &self.base {
            parts.push(format!("--circuit {c}"));
        }
        parts.push(format!("--target {}", self.target));
        parts.push(format!("--rank {}", self.rank.name()));
        if let Method::EapIg { steps } = self.rank {
            if steps != 5 {
                parts.push(format!("--steps {steps}"));
            }
        }
        if self.granularity != Granularity::Nodes {
            parts.push(format!("--granularity {}", self.granularity.name()));
        }
        if let Some(t) = self.attention_threshold {
            parts.push(format!("--attention-threshold {t}"));
        }
        if self.best_effort {
            parts.push("--best-effort".to_string());
        }
        parts.join(" ")
    }
}
