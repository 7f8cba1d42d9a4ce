//! safetensors weight files: memory-mapped, validated, converted tensor by tensor to f32.
//!
//! Each tensor is converted once into an owned f32 array; right after, its pages of the map are
//! released (`MADV_DONTNEED`), so the process never holds the file and its converted copy at
//! the same time (peak ≈ the f32 weights plus one tensor), whatever the dtype on disk.
//! With [`WeightFiles::keep_stored`], a BF16/F16 matrix read with [`WeightFiles::matrix`] is
//! instead kept as a view of the map (`stored.rs`): checked, never copied.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, SafeTensorError};
use safetensors::{Dtype, SafeTensors};

use super::error::ModelError;
use super::stored::{Half, StoredMatrix, Weight};

/// The bytes of one safetensors file: a read-only map of a file, or bytes compiled in; shared
/// by the matrices kept in their stored dtype, which keep the map alive. `Owned` holds bytes
/// gathered from a file (GPT-NeoX's q, k and v rows, interleaved by head in its fused matrix),
/// still in the stored dtype.
#[derive(Clone)]
pub(crate) enum Bytes {
    Mapped(Arc<Mmap>),
    Static(&'static [u8]),
    Owned(Arc<[u8]>),
}

impl Bytes {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Static(bytes) => bytes,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// One safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    bytes: Bytes,
    /// Byte offset of the data section (8 + header length).
    data_start: usize,
    metadata: Metadata,
}

/// All weight files of a model, tensors looked up by name.
pub(crate) struct WeightFiles {
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    location: HashMap<String, usize>,
    /// Architecture name used in "tensor missing" errors.
    architecture: String,
    /// Tensors read so far: every tensor of the files must be, or the load fails.
    used: RefCell<BTreeSet<String>>,
    /// Whether [`WeightFiles::matrix`] keeps BF16/F16 matrices in their stored dtype.
    pub(crate) keep_stored: bool,
}

/// Tensors a checkpoint may hold that no model computes with, by name suffix: the causal mask
/// buffers of GPT-2 (`h.N.attn.bias`, `h.N.attn.masked_bias`) and GPT-NeoX
/// (`layers.N.attention.bias`, `layers.N.attention.masked_bias`), saved by older transformers,
/// and the rotary frequency caches of Llama and GPT-NeoX (`rotary_emb.inv_freq`), which the
/// engine derives from the config. Any other unread tensor fails the load: it means config and
/// weights disagree (e.g. fewer layers in config.json than in the file).
const KNOWN_EXTRAS: [&str; 5] = [
    ".attn.bias",
    ".attn.masked_bias",
    ".attention.bias",
    ".attention.masked_bias",
    ".rotary_emb.inv_freq",
];

fn describe(err: &SafeTensorError) -> String {
    match err {
        SafeTensorError::HeaderTooSmall => {
            "the file is shorter than the 8-byte header length (truncated)".to_string()
        }
        SafeTensorError::HeaderTooLarge => {
            "the header length exceeds the 100 MB limit (oversized or corrupt header)".to_string()
        }
        SafeTensorError::InvalidHeaderLength => {
            "the header length points past the end of the file (truncated header)".to_string()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the data section does not match the sizes in the header (truncated data)".to_string()
        }
        other => format!("{other}"),
    }
}

impl WeightFiles {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub(crate) fn open_dir(dir: &Path, architecture: &str) -> Result<Self, ModelError> {
        let files = weight_file_list(dir)?;
        let mut shards = Vec::with_capacity(files.len());
        for path in files {
            let file = std::fs::File::open(&path).map_err(|source| ModelError::WeightsRead {
                path: path.clone(),
                source,
            })?;
            let len = file
                .metadata()
                .map_err(|source| ModelError::WeightsRead {
                    path: path.clone(),
                    source,
                })?
                .len();
            if len < 8 {
                return Err(ModelError::BadSafetensors {
                    path,
                    problem: describe(&SafeTensorError::HeaderTooSmall),
                });
            }
            // SAFETY: the map is read-only; like every mmap reader we rely on the model file not
            // being truncated or rewritten while it is loaded (it is released after loading).
            let map = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::WeightsRead {
                path: path.clone(),
                source,
            })?;
            shards.push(Shard::parse(path, Bytes::Mapped(Arc::new(map)))?);
        }
        Self::index(shards, architecture)
    }

    /// Weights compiled into the binary; `label` names them in errors.
    pub(crate) fn from_static(
        bytes: &'static [u8],
        label: PathBuf,
        architecture: &str,
    ) -> Result<Self, ModelError> {
        Self::index(
            vec![Shard::parse(label, Bytes::Static(bytes))?],
            architecture,
        )
    }

    fn index(shards: Vec<Shard>, architecture: &str) -> Result<Self, ModelError> {
        let mut location = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for name in shard.metadata.tensors().into_keys() {
                location.insert(name, i);
            }
        }
        Ok(WeightFiles {
            shards,
            location,
            architecture: architecture.to_string(),
            used: RefCell::new(BTreeSet::new()),
            keep_stored: false,
        })
    }

    /// Path used in messages about the weights as a whole.
    pub(crate) fn main_path(&self) -> &Path {
        &self.shards[0].path
    }

    /// The number of elements of every tensor, from the headers (no data read).
    pub(crate) fn element_counts(&self) -> Vec<u64> {
        self.shards
            .iter()
            .flat_map(|shard| shard.metadata.tensors().into_values())
            .map(|info| info.shape.iter().map(|&d| d as u64).product())
            .collect()
    }

    /// Every tensor's name, dtype and shape, from the headers (no data read).
    pub(crate) fn headers(&self) -> Vec<(String, Dtype, Vec<usize>)> {
        self.shards
            .iter()
            .flat_map(|shard| shard.metadata.tensors())
            .map(|(name, info)| (name, info.dtype, info.shape.clone()))
            .collect()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    /// The `(rows, cols)` matrix `name`: kept in its stored dtype with [`Self::keep_stored`]
    /// if the file holds it as BF16/F16 (checked for non-finite values, not copied), else read
    /// as f32 ([`Self::tensor`]).
    pub(crate) fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Weight, ModelError> {
        if self.keep_stored {
            let (shard, info, range) = self.locate(name, &[rows, cols])?;
            let dtype = match info.dtype {
                Dtype::BF16 => Some(Half::Bf16),
                Dtype::F16 => Some(Half::F16),
                _ => None,
            };
            if let Some(dtype) = dtype {
                let bytes = &shard.bytes.as_slice()[range.clone()];
                if let Some((index, value)) = dtype.first_non_finite(bytes) {
                    return Err(ModelError::NonFiniteWeight {
                        path: shard.path.clone(),
                        tensor: name.to_string(),
                        index,
                        value: value.to_string(),
                    });
                }
                self.used.borrow_mut().insert(name.to_string());
                return Ok(Weight::Stored(StoredMatrix::row_major(
                    shard.bytes.clone(),
                    range.start,
                    dtype,
                    (rows, cols),
                )));
            }
        }
        let values = self.tensor(name, &[rows, cols])?;
        Ok(Weight::F32(
            ndarray::Array2::from_shape_vec((rows, cols), values).expect("shape checked"),
        ))
    }

    /// The shard, header entry and byte range of tensor `name`, checking that its shape is
    /// `expected`.
    fn locate(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<
        (
            &Shard,
            &safetensors::tensor::TensorInfo,
            std::ops::Range<usize>,
        ),
        ModelError,
    > {
        let Some(&index) = self.location.get(name) else {
            return Err(ModelError::TensorMissing {
                path: self.main_path().to_path_buf(),
                tensor: name.to_string(),
                architecture: self.architecture.clone(),
            });
        };
        let shard = &self.shards[index];
        let info = shard
            .metadata
            .info(name)
            .expect("tensor listed in the index");
        if info.shape != expected {
            return Err(ModelError::TensorShape {
                path: shard.path.clone(),
                tensor: name.to_string(),
                found: info.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        let (start, end) = info.data_offsets;
        Ok((
            shard,
            info,
            shard.data_start + start..shard.data_start + end,
        ))
    }

    /// Reads tensor `name` as f32, checking that its shape is `expected`.
    pub(crate) fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (shard, info, range) = self.locate(name, expected)?;
        let bytes = &shard.bytes.as_slice()[range.clone()];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::TensorDtype {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    found: format!("{other:?}"),
                })
            }
        };
        shard.release(range);
        if let Some(index) = values.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::NonFiniteWeight {
                path: shard.path.clone(),
                tensor: name.to_string(),
                index,
                value: values[index].to_string(),
            });
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(values)
    }

    /// An `nn.Linear(d_in → d_out)` named `name`: `{name}.weight` stored `(out, in)` and seen
    /// as the `(in, out)` the forward multiplies by (a transposed view, no copy), and
    /// `{name}.bias` when `bias`.
    pub(crate) fn linear(
        &self,
        name: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<super::transformer::Linear, ModelError> {
        Ok(super::transformer::Linear {
            weight: self
                .matrix(&format!("{name}.weight"), d_out, d_in)?
                .reversed_axes(), // (in, out)
            bias: match bias {
                true => Some(self.tensor(&format!("{name}.bias"), &[d_out])?.into()),
                false => None,
            },
        })
    }

    /// How many layers the file holds: the `i` from 0 for which `tensor_of_layer(i)` exists.
    pub(crate) fn layer_count(&self, tensor_of_layer: impl Fn(usize) -> String) -> usize {
        (0..)
            .take_while(|&i| self.contains(&tensor_of_layer(i)))
            .count()
    }

    /// That config.json's `field` (`config` layers) is the number of layers the file holds
    /// (`tensor_of_layer(i)` present for `i` from 0): checked before anything is allocated from
    /// config values.
    pub(crate) fn check_layer_count(
        &self,
        field: &str,
        config: usize,
        tensor_of_layer: impl Fn(usize) -> String,
    ) -> Result<(), ModelError> {
        let weights = self.layer_count(tensor_of_layer);
        if weights == config {
            return Ok(());
        }
        Err(ModelError::LayerCount {
            path: self.main_path().to_path_buf(),
            field: field.to_string(),
            config,
            weights,
        })
    }

    /// After a loader has read what its model needs: every other tensor (outside
    /// [`KNOWN_EXTRAS`]) is an error naming them.
    pub(crate) fn check_all_used(&self) -> Result<(), ModelError> {
        let used = self.used.borrow();
        let mut unexpected: Vec<&String> = self
            .location
            .keys()
            .filter(|name| !used.contains(*name))
            .filter(|name| !KNOWN_EXTRAS.iter().any(|extra| name.ends_with(extra)))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        unexpected.sort();
        const SHOWN: usize = 5;
        let mut list = unexpected
            .iter()
            .take(SHOWN)
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ");
        if unexpected.len() > SHOWN {
            list += &format!(" and {} more", unexpected.len() - SHOWN);
        }
        Err(ModelError::UnexpectedTensors {
            path: self.main_path().to_path_buf(),
            count: unexpected.len(),
            list,
            architecture: self.architecture.clone(),
        })
    }
}

impl Shard {
    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self, ModelError> {
        let (header_len, metadata) = SafeTensors::read_metadata(bytes.as_slice()).map_err(|e| {
            ModelError::BadSafetensors {
                path: path.clone(),
                problem: faulty_tensor(bytes.as_slice()).unwrap_or_else(|| describe(&e)),
            }
        })?;
        Ok(Shard {
            path,
            bytes,
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Drops the map's resident pages of a converted tensor (they are never read again).
    fn release(&self, range: std::ops::Range<usize>) {
        if let Bytes::Mapped(map) = &self.bytes {
            // Only whole pages inside the range may be released.
            let page = 4096;
            let start = range.start.div_ceil(page) * page;
            let end = range.end / page * page;
            if end > start {
                // SAFETY: a read-only shared file map; DONTNEED only drops resident pages, which
                // the kernel re-reads from the file if touched again. No reference into these
                // pages outlives this call (the converted values are owned).
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }
}

/// Which tensor entry of a header the safetensors reader rejected, and why: its errors for a
/// bad dtype, a shape that does not match the byte range, or overlapping offsets do not all
/// name the tensor. `None` when the header itself is unreadable or no entry is at fault.
fn faulty_tensor(bytes: &[u8]) -> Option<String> {
    let header_len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(&String, &serde_json::Value)> = json
        .as_object()?
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .collect();
    let offsets = |entry: &serde_json::Value| -> Option<(u64, u64)> {
        let pair = entry.get("data_offsets")?.as_array()?;
        match pair.as_slice() {
            [start, end] => Some((start.as_u64()?, end.as_u64()?)),
            _ => None,
        }
    };
    for (name, entry) in &entries {
        let fault = |problem: String| Some(format!("tensor `{name}`: {problem}"));
        let Some(dtype) = entry.get("dtype").and_then(|d| d.as_str()) else {
            return fault("no dtype".to_string());
        };
        let Some(bits) = dtype_bits(dtype) else {
            return fault(format!("unknown dtype {dtype:?}"));
        };
        let shape: Option<Vec<u64>> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|dims| dims.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else {
            return fault("the shape is not a list of sizes".to_string());
        };
        let Some((start, end)) = offsets(entry) else {
            return fault("data_offsets is not a [start, end] pair".to_string());
        };
        let n_bits = shape
            .iter()
            .try_fold(bits, |n, &d| n.checked_mul(d))
            .filter(|n| n % 8 == 0);
        match n_bits {
            None => return fault(format!("the size of shape {shape:?} of {dtype} overflows")),
            Some(n_bits) if end.checked_sub(start) != Some(n_bits / 8) => {
                return fault(format!(
                    "shape {shape:?} of {dtype} needs {} bytes, but data_offsets [{start}, {end}] span {}",
                    n_bits / 8,
                    end as i128 - start as i128
                ))
            }
            Some(_) => {}
        }
    }
    // Entries must tile the data section in offset order.
    entries.sort_by_key(|(_, entry)| offsets(entry));
    let mut next = 0;
    for (name, entry) in entries {
        let (start, end) = offsets(entry)?;
        if start != next {
            return Some(format!(
                "tensor `{name}`: data_offsets start at {start}, but the previous tensor ends at {next}"
            ));
        }
        next = end;
    }
    let data_len = bytes.len() - 8 - header_len;
    if next != data_len as u64 {
        return Some(format!(
            "the tensors cover {next} bytes of data, but the file holds {data_len} (truncated data)"
        ));
    }
    None
}

/// Bits per element of a safetensors dtype name.
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// The shard files named by a `model.safetensors.index.json`, in first-use order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::WeightsRead {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |problem: &str| ModelError::BadShardIndex {
        path: index.to_path_buf(),
        problem: problem.to_string(),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for file in map.values() {
        let name = file
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names"))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(bad(&format!("shard {name:?} is not a plain file name")));
        }
        let path = dir.join(name);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty"));
    }
    Ok(files)
}

/// The files whose bytes [`weights_hash`](super::Model::weights_hash) covers, in order.
pub(crate) fn weight_file_list(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if !single.exists() && index.exists() {
        shard_files(&index)
    } else {
        Ok(vec![single])
    }
}
