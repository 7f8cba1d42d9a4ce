//! Results kept on disk between runs: reference values (one safetensors file per set of
//! needs) and per-prompt metrics of a plan (one JSON file per plan), each named by a content
//! key. A cache is an optimization: an entry that is missing, damaged or cannot be written is
//! computed instead, never an error.
//!
//! Every entry's name comes from one function, [`CacheKeys::key`]. The key is the sha256 of,
//! in this order:
//!
//! 1. a format tag (`circuit disk cache v2`), the crate version and the fingerprint of the
//!    numeric code (build.rs), so that a changed engine never reads old results;
//! 2. the sha256 of the model's weight bytes;
//! 3. the ablation settings (ablation kind, edge ablation, scope);
//! 4. every evaluated prompt: its length, its token ids, its answer and distractor ids;
//! 5. every reference prompt: its length and token ids (these fix the dataset and tokenizer);
//! 6. under `align by label`, the slots of every evaluated and reference prompt
//!    ([`LabelAlignment::cache_text`]);
//! 7. the entry: for reference values, the heads whose QK-edge terms are needed and whether
//!    per-head outputs are; for metrics, the plan's [`Plan::content_key`](crate::plan::Plan).
//!
//! Items 1–6 are hashed once per evaluator; each key clones that state and adds item 7.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::evaluate::{AblationSettings, PromptMetrics};
use super::Targets;
use crate::ablate::{LabelAlignment, ReferenceNeeds, ReferenceValues};

/// What an entry holds; the last part of its key.
pub enum Entry<'a> {
    /// Reference values covering these needs.
    Reference(&'a ReferenceNeeds),
    /// Per-prompt metrics of the plan with this content key.
    Metrics { plan_key: &'a str },
}

/// Everything a cached value depends on besides the entry itself.
pub struct CacheInputs<'a> {
    pub weights_sha256: &'a str,
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
        hasher.update(b"circuit disk cache v2\n");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(env!("CIRCUIT_NUMERIC_CODE_FINGERPRINT").as_bytes());
        hasher.update(inputs.weights_sha256.as_bytes());
        let s = inputs.settings;
        hasher.update(format!(
            "\n{:?} {:?} {:?}\n",
            s.ablation, s.edge_ablation, s.scope
        ));
        let put_prompt = |hasher: &mut Sha256, prompt: &[u32]| {
            hasher.update((prompt.len() as u64).to_le_bytes());
            prompt.iter().for_each(|id| hasher.update(id.to_le_bytes()));
        };
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
            }
            Entry::Metrics { plan_key } => {
                hasher.update(b"per-prompt metrics\n");
                hasher.update(plan_key.as_bytes());
            }
        }
        hex::encode(hasher.finalize())
    }
}

/// A folder of cache entries.
#[derive(Clone, Debug)]
pub struct DiskCache {
    pub dir: PathBuf,
}

impl DiskCache {
    fn path(&self, keys: &CacheKeys, entry: &Entry) -> PathBuf {
        let key = keys.key(entry);
        self.dir.join(match entry {
            Entry::Reference(_) => format!("reference-{key}.safetensors"),
            Entry::Metrics { .. } => format!("metrics-{key}.json"),
        })
    }

    pub fn read_reference(
        &self,
        keys: &CacheKeys,
        needs: &ReferenceNeeds,
    ) -> Option<ReferenceValues> {
        let bytes = std::fs::read(self.path(keys, &Entry::Reference(needs))).ok()?;
        ReferenceValues::from_safetensors(&bytes)
    }

    pub fn write_reference(
        &self,
        keys: &CacheKeys,
        needs: &ReferenceNeeds,
        values: &ReferenceValues,
    ) {
        write_quietly(
            &self.path(keys, &Entry::Reference(needs)),
            &values.to_safetensors(),
        );
    }

    /// Per-prompt metrics as [`DiskCache::write_metrics`] wrote them; `None` for a missing or
    /// damaged entry.
    pub fn read_metrics(&self, keys: &CacheKeys, plan_key: &str) -> Option<PromptMetrics> {
        let path = self.path(keys, &Entry::Metrics { plan_key });
        let text = std::fs::read_to_string(path).ok()?;
        let bits: BTreeMap<String, Vec<u64>> = serde_json::from_str(&text).ok()?;
        let mut out = PromptMetrics::new();
        for metric in super::ALL_METRICS {
            let values = bits.get(super::metric_name(metric))?;
            out.insert(metric, values.iter().map(|&b| f64::from_bits(b)).collect());
        }
        Some(out)
    }

    /// Per-prompt metrics as JSON with every f64 stored as its bit pattern, so a cached run
    /// reproduces a computed one bit for bit.
    pub fn write_metrics(&self, keys: &CacheKeys, plan_key: &str, metrics: &PromptMetrics) {
        let bits: BTreeMap<&str, Vec<u64>> = metrics
            .iter()
            .map(|(&m, values)| {
                (
                    super::metric_name(m),
                    values.iter().map(|x| x.to_bits()).collect(),
                )
            })
            .collect();
        let text = serde_json::to_string(&bits).expect("metrics serialize");
        write_quietly(
            &self.path(keys, &Entry::Metrics { plan_key }),
            text.as_bytes(),
        );
    }
}

/// A cache is an optimization: failing to write it is not an error.
fn write_quietly(path: &Path, bytes: &[u8]) {
    let _ = std::fs::create_dir_all(path.parent().expect("a file in a folder"))
        .and_then(|_| crate::util::write_atomic(path, bytes));
}

/// Where reference values are cached between runs: `$CIRCUIT_CACHE_DIR` (`off` disables it),
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
