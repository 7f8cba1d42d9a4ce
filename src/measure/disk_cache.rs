//! Results kept on disk between runs: reference values (safetensors) and per-prompt metrics of
//! a plan (JSON), each in one file named by a content key. A cache is an optimization: an entry
//! that is missing, damaged or cannot be written is computed instead, never an error, and never
//! trusted unverified.
//!
//! Every entry's name comes from one function, [`CacheKeys::key`]. The key is the sha256 of,
//! in this order:
//!
//! 1. a format tag (`circuit disk cache v3`), the crate version and the fingerprint of the
//!    numeric code (build.rs), so that a changed engine never reads old results;
//! 2. the model's config as the engine uses it (the parsed [`ModelConfig`] as JSON, not the
//!    file's bytes: every value that changes a number, such as `layer_norm_epsilon` or
//!    `rope_theta`), the sha256 of its weight bytes and the sha256 of its tokenizer;
//! 3. the ablation settings (ablation kind, edge ablation, scope);
//! 4. every evaluated prompt: its length, its token ids, its answer and distractor ids;
//! 5. every reference prompt: its length and token ids (these fix the dataset's content as
//!    the numbers see it; labels enter through the plan and the slots);
//! 6. under `align by label`, the slots of every evaluated and reference prompt
//!    ([`LabelAlignment::cache_text`]);
//! 7. the entry: for reference values, the heads whose QK-edge terms are needed and whether
//!    per-head outputs are; for metrics, the plan's [`Plan::content_key`](crate::plan::Plan).
//!
//! Items 1–6 are hashed once per evaluator; each key clones that state and adds item 7.
//!
//! An entry file is a line `circuit cache entry v3`, a line of JSON (its key, its kind, the
//! shapes its content must have, the content's length and sha256), then the content. Reading
//! checks all of it, then decodes the content and checks the decoded arrays against the shapes
//! the reader expects (prompt count, layers, heads, widths, positions, sources, source indices);
//! anything that does not verify is a [`Lookup::Rejected`], recomputed and overwritten.
//!
//! The folder is bounded ([`DEFAULT_MAX_BYTES`], `$CIRCUIT_CACHE_MAX_BYTES`): after a write the
//! least recently used entries (by modification time, which a read refreshes) are removed
//! until the entries fit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use miette::Diagnostic;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::evaluate::{AblationSettings, PromptMetrics};
use super::Targets;
use crate::ablate::{LabelAlignment, ReferenceNeeds, ReferenceShape, ReferenceValues};
use crate::model::ModelConfig;

/// What an entry holds; the last part of its key.
pub enum Entry<'a> {
    /// Reference values covering these needs.
    Reference(&'a ReferenceNeeds),
    /// Per-prompt metrics of the plan with this content key.
    Metrics { plan_key: &'a str },
}

impl Entry<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Reference(_) => "reference",
            Entry::Metrics { .. } => "metrics",
        }
    }
}

/// Everything a cached value depends on besides the entry itself.
pub struct CacheInputs<'a> {
    pub config: &'a ModelConfig,
    pub weights_sha256: &'a str,
    pub tokenizer_sha256: &'a str,
    pub settings: AblationSettings,
    pub evaluated: &'a [Vec<u32>],
    pub targets: &'a [Targets],
    pub reference: &'a [Vec<u32>],
    pub label_alignment: Option<&'a LabelAlignment>,
}

/// The key function, with items 1–6 of the module docs hashed once.
#[derive(Clone)]
pub struct CacheKeys {
    prefix: Sha256,
}

impl CacheKeys {
    pub fn new(inputs: &CacheInputs) -> CacheKeys {
        let mut hasher = Sha256::new();
        hasher.update(b"circuit disk cache v3\n");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(env!("CIRCUIT_NUMERIC_CODE_FINGERPRINT").as_bytes());
        hasher.update(b"\nconfig ");
        hasher.update(serde_json::to_string(inputs.config).expect("a config serializes"));
        hasher.update(b"\nweights ");
        hasher.update(inputs.weights_sha256.as_bytes());
        hasher.update(b"\ntokenizer ");
        hasher.update(inputs.tokenizer_sha256.as_bytes());
        let s = inputs.settings;
        hasher.update(format!(
            "\n{:?} {:?} {:?}\n",
            s.ablation, s.edge_ablation, s.scope
        ));
        let put_prompt = |hasher: &mut Sha256, prompt: &[u32]| {
            hasher.update((prompt.len() as u64).to_le_bytes());
            prompt.iter().for_each(|id| hasher.update(id.to_le_bytes()));
        };
        hasher.update(format!("evaluated {}\n", inputs.evaluated.len()));
        for (prompt, target) in inputs.evaluated.iter().zip(inputs.targets) {
            put_prompt(&mut hasher, prompt);
            hasher.update(target.answer.to_le_bytes());
            hasher.update(target.distractor.to_le_bytes());
        }
        hasher.update(format!("reference {}\n", inputs.reference.len()));
        for prompt in inputs.reference {
            put_prompt(&mut hasher, prompt);
        }
        if let Some(alignment) = inputs.label_alignment {
            hasher.update(alignment.cache_text().as_bytes());
        }
        CacheKeys { prefix: hasher }
    }

    /// The content key of one entry (hex sha256).
    pub fn key(&self, entry: &Entry) -> String {
        let mut hasher = self.prefix.clone();
        match entry {
            Entry::Reference(needs) => {
                hasher.update(b"reference values\n");
                for head in &needs.edge_heads {
                    hasher.update(format!("edge {head}\n"));
                }
                hasher.update(format!("head_outputs {}\n", needs.head_outputs));
                if needs.source_attention {
                    hasher.update(b"source_attention\n");
                }
            }
            Entry::Metrics { plan_key } => {
                hasher.update(b"per-prompt metrics\n");
                hasher.update(plan_key.as_bytes());
            }
        }
        hex::encode(hasher.finalize())
    }
}

/// A callback told what the cache did, one sentence per event (`--verbose`).
pub type OnNote<'a> = Box<dyn Fn(&str) + 'a>;

/// The result of looking an entry up.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    /// No entry under this key.
    Absent,
    /// An entry that does not verify (why); it is recomputed and overwritten.
    Rejected(String),
}

/// The first line of every entry file.
const MAGIC: &[u8] = b"circuit cache entry v3\n";

/// Default bound of the cache folder's entries: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A folder of cache entries.
#[derive(Clone, Debug)]
pub struct DiskCache {
    pub dir: PathBuf,
    /// After a write, least recently used entries are removed until the rest fit in this.
    pub max_bytes: u64,
}

impl DiskCache {
    /// A cache in `dir` bounded by [`DEFAULT_MAX_BYTES`].
    pub fn new(dir: PathBuf) -> DiskCache {
        DiskCache {
            dir,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    fn path(&self, key: &str, entry: &Entry) -> PathBuf {
        self.dir.join(format!("{}-{key}.entry", entry.kind()))
    }

    /// Reads an entry's content after checking its envelope: key, kind, expected shape,
    /// length and checksum. A hit refreshes the file's time (least-recently-used eviction).
    fn read_entry(
        &self,
        keys: &CacheKeys,
        entry: &Entry,
        shape: &serde_json::Value,
    ) -> Lookup<Vec<u8>> {
        let key = keys.key(entry);
        let path = self.path(&key, entry);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Absent,
            Err(e) => return Lookup::Rejected(format!("{}: cannot read: {e}", path.display())),
        };
        match open_envelope(&bytes, &key, entry.kind(), shape) {
            Ok(content) => {
                touch(&path);
                Lookup::Hit(content.to_vec())
            }
            Err(why) => Lookup::Rejected(format!("{}: {why}", path.display())),
        }
    }

    /// Writes an entry (atomically), then evicts least recently used entries past the bound.
    /// Returns what was evicted, for `--verbose`.
    fn write_entry(
        &self,
        keys: &CacheKeys,
        entry: &Entry,
        shape: &serde_json::Value,
        content: &[u8],
    ) -> Vec<String> {
        let key = keys.key(entry);
        let header = serde_json::json!({
            "key": key,
            "kind": entry.kind(),
            "shape": shape,
            "content_bytes": content.len(),
            "content_sha256": hex::encode(Sha256::digest(content)),
        });
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(header.to_string().as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(content);
        if bytes.len() as u64 > self.max_bytes {
            return vec![format!(
                "not cached: a {} entry of {} bytes exceeds the cache bound of {} bytes",
                entry.kind(),
                bytes.len(),
                self.max_bytes
            )];
        }
        let path = self.path(&key, entry);
        // A cache is an optimization: failing to write it is not an error.
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|_| crate::util::write_atomic(&path, &bytes))
            .is_ok();
        if !written {
            return Vec::new();
        }
        self.evict(&path)
    }

    /// Removes the least recently used entries (never `keep`) until the rest fit.
    fn evict(&self, keep: &Path) -> Vec<String> {
        let mut entries = list_entries(&self.dir);
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        entries.sort_by_key(|e| e.used);
        let mut evicted = Vec::new();
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            if e.path == keep {
                continue;
            }
            if std::fs::remove_file(&e.path).is_ok() {
                total -= e.bytes;
                evicted.push(format!(
                    "evicted {} ({} bytes, least recently used)",
                    e.path.display(),
                    e.bytes
                ));
            }
        }
        evicted
    }

    /// Reference values for `needs`, verified against `shape`.
    pub fn read_reference(
        &self,
        keys: &CacheKeys,
        needs: &ReferenceNeeds,
        shape: &ReferenceShape,
    ) -> Lookup<ReferenceValues> {
        let expected = serde_json::to_value(shape).expect("a shape serializes");
        let content = match self.read_entry(keys, &Entry::Reference(needs), &expected) {
            Lookup::Hit(content) => content,
            Lookup::Absent => return Lookup::Absent,
            Lookup::Rejected(why) => return Lookup::Rejected(why),
        };
        let Some(values) = ReferenceValues::from_safetensors(&content) else {
            return Lookup::Rejected("reference values: not a reference values file".into());
        };
        match values.check_shape(shape) {
            Ok(()) => Lookup::Hit(values),
            Err(why) => Lookup::Rejected(format!("reference values: {why}")),
        }
    }

    pub fn write_reference(
        &self,
        keys: &CacheKeys,
        needs: &ReferenceNeeds,
        shape: &ReferenceShape,
        values: &ReferenceValues,
    ) -> Vec<String> {
        let expected = serde_json::to_value(shape).expect("a shape serializes");
        self.write_entry(
            keys,
            &Entry::Reference(needs),
            &expected,
            &values.to_safetensors(),
        )
    }

    /// Per-prompt metrics as [`DiskCache::write_metrics`] wrote them, `n_prompts` values of
    /// every metric.
    pub fn read_metrics(
        &self,
        keys: &CacheKeys,
        plan_key: &str,
        n_prompts: usize,
    ) -> Lookup<PromptMetrics> {
        let entry = Entry::Metrics { plan_key };
        let content = match self.read_entry(keys, &entry, &metrics_shape(n_prompts)) {
            Lookup::Hit(content) => content,
            Lookup::Absent => return Lookup::Absent,
            Lookup::Rejected(why) => return Lookup::Rejected(why),
        };
        let Ok(bits) = serde_json::from_slice::<BTreeMap<String, Vec<u64>>>(&content) else {
            return Lookup::Rejected("metrics: not a metrics file".into());
        };
        let mut out = PromptMetrics::new();
        for metric in super::ALL_METRICS {
            let name = super::metric_name(metric);
            match bits.get(name) {
                Some(values) if values.len() == n_prompts => {
                    out.insert(metric, values.iter().map(|&b| f64::from_bits(b)).collect());
                }
                Some(values) => {
                    return Lookup::Rejected(format!(
                        "metrics: {} values of {name} for {n_prompts} prompts",
                        values.len()
                    ))
                }
                None => return Lookup::Rejected(format!("metrics: no {name}")),
            }
        }
        Lookup::Hit(out)
    }

    /// Per-prompt metrics as JSON with every f64 stored as its bit pattern, so a cached run
    /// reproduces a computed one bit for bit.
    pub fn write_metrics(
        &self,
        keys: &CacheKeys,
        plan_key: &str,
        metrics: &PromptMetrics,
    ) -> Vec<String> {
        let bits: BTreeMap<&str, Vec<u64>> = metrics
            .iter()
            .map(|(&m, values)| {
                (
                    super::metric_name(m),
                    values.iter().map(|x| x.to_bits()).collect(),
                )
            })
            .collect();
        let n_prompts = metrics.values().next().map_or(0, Vec::len);
        let text = serde_json::to_string(&bits).expect("metrics serialize");
        self.write_entry(
            keys,
            &Entry::Metrics { plan_key },
            &metrics_shape(n_prompts),
            text.as_bytes(),
        )
    }

    /// What the folder holds: entries and their total size.
    pub fn info(&self) -> CacheInfo {
        let entries = list_entries(&self.dir);
        let count = |kind: &str| entries.iter().filter(|e| e.kind == kind).count();
        CacheInfo {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            reference_entries: count("reference"),
            metrics_entries: count("metrics"),
            bytes: entries.iter().map(|e| e.bytes).sum(),
        }
    }

    /// Removes every entry (files of other names in the folder are left alone); returns how
    /// many entries and bytes were removed.
    pub fn clear(&self) -> std::io::Result<(usize, u64)> {
        let mut removed = (0, 0);
        for e in list_entries(&self.dir) {
            std::fs::remove_file(&e.path)?;
            removed.0 += 1;
            removed.1 += e.bytes;
        }
        Ok(removed)
    }
}

/// The expected shape of a metrics entry.
fn metrics_shape(n_prompts: usize) -> serde_json::Value {
    let metrics: Vec<&str> = super::ALL_METRICS
        .iter()
        .map(|&m| super::metric_name(m))
        .collect();
    serde_json::json!({ "n_prompts": n_prompts, "metrics": metrics })
}

/// The content of an entry file whose envelope verifies, or why it does not.
fn open_envelope<'b>(
    bytes: &'b [u8],
    key: &str,
    kind: &str,
    shape: &serde_json::Value,
) -> Result<&'b [u8], String> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or("not a v3 cache entry (first line)")?;
    let newline = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let (header, content) = (&rest[..newline], &rest[newline + 1..]);
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| format!("header is not JSON: {e}"))?;
    let field = |name: &str| header.get(name).ok_or(format!("header has no `{name}`"));
    if field("key")?.as_str() != Some(key) {
        return Err("the header's key is not the file's key".into());
    }
    if field("kind")?.as_str() != Some(kind) {
        return Err(format!("the header's kind is not {kind}"));
    }
    if field("shape")? != shape {
        return Err(format!(
            "shape {} where {shape} is expected",
            field("shape")?
        ));
    }
    if field("content_bytes")?.as_u64() != Some(content.len() as u64) {
        return Err(format!(
            "{} content bytes where the header says {}",
            content.len(),
            field("content_bytes")?
        ));
    }
    if field("content_sha256")?.as_str() != Some(&hex::encode(Sha256::digest(content))) {
        return Err("the content's checksum does not match (damaged)".into());
    }
    Ok(content)
}

/// Marks an entry as just used (its modification time), for least-recently-used eviction.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// One entry file of a cache folder.
struct EntryFile {
    path: PathBuf,
    kind: &'static str,
    bytes: u64,
    used: SystemTime,
}

/// The entry files of a folder: `reference-<key>` and `metrics-<key>` of this format
/// (`.entry`) and of the earlier one (`.safetensors`, `.json`), which no key names any more.
fn list_entries(dir: &Path) -> Vec<EntryFile> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kind = entry_kind(&name)?;
            let meta = e.metadata().ok().filter(|m| m.is_file())?;
            Some(EntryFile {
                path: e.path(),
                kind,
                bytes: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

/// `reference` or `metrics` when `name` is a cache entry's file name.
fn entry_kind(name: &str) -> Option<&'static str> {
    let (kind, rest) = if let Some(rest) = name.strip_prefix("reference-") {
        ("reference", rest)
    } else {
        ("metrics", name.strip_prefix("metrics-")?)
    };
    let (key, ext) = rest.split_once('.')?;
    let is_key = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    let known_ext = matches!(ext, "entry" | "safetensors" | "json");
    (is_key && known_ext).then_some(kind)
}

/// What a cache folder holds (`circuit cache info`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CacheInfo {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub reference_entries: usize,
    pub metrics_entries: usize,
    pub bytes: u64,
}

/// A cache setting from the environment that cannot be read.
#[derive(Debug, Error, Diagnostic)]
pub enum CacheError {
    #[error("CIRCUIT_CACHE_MAX_BYTES={value:?} is not a size")]
    #[diagnostic(
        code(circuit::cache::max_bytes),
        help("a number of bytes, optionally with a suffix K, M or G (powers of 1024): 500M, 4G")
    )]
    MaxBytes { value: String },
}

/// The cache bound: `$CIRCUIT_CACHE_MAX_BYTES` (bytes, or with a K/M/G suffix), else
/// [`DEFAULT_MAX_BYTES`].
pub fn cache_max_bytes() -> Result<u64, CacheError> {
    match std::env::var("CIRCUIT_CACHE_MAX_BYTES") {
        Ok(value) if !value.trim().is_empty() => {
            parse_size(&value).ok_or(CacheError::MaxBytes { value })
        }
        _ => Ok(DEFAULT_MAX_BYTES),
    }
}

/// `500M`, `4G`, `1024`: bytes, or with a K/M/G suffix (powers of 1024).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last()? {
        (i, 'k' | 'K') => (&text[..i], 10),
        (i, 'm' | 'M') => (&text[..i], 20),
        (i, 'g' | 'G') => (&text[..i], 30),
        _ => (text, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Where results are cached between runs: `$CIRCUIT_CACHE_DIR` (`off` disables it),
/// else `$XDG_CACHE_HOME/circuit`, else `$HOME/.cache/circuit`.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CIRCUIT_CACHE_DIR") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(|v| PathBuf::from(v).join("circuit"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/circuit"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("500m"), Some(500 << 20));
        assert_eq!(parse_size("huge"), None);
        assert_eq!(parse_size("99999999999999999G"), None);
    }

    #[test]
    fn only_entry_names_are_entries() {
        let key = "a".repeat(64);
        assert_eq!(
            entry_kind(&format!("reference-{key}.entry")),
            Some("reference")
        );
        assert_eq!(entry_kind(&format!("metrics-{key}.json")), Some("metrics"));
        assert_eq!(entry_kind("metrics-short.entry"), None);
        assert_eq!(entry_kind(&format!("notes-{key}.entry")), None);
        assert_eq!(entry_kind(&format!("metrics-{key}.txt")), None);
    }
}
