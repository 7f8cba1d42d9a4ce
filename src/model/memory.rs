//! Whether a model fits in memory, decided before any weight is converted (issue 17).
//!
//! The kernel kills a process that outgrows its memory (the OOM killer, or the cgroup limit of
//! a container or a Slurm job) with no message at all, minutes into loading an 8B model. So
//! [`check_fits`] estimates from the safetensors headers alone (shapes and dtypes; no tensor
//! data is read) the bytes the loaded model will hold, compares them with what the machine
//! offers, and refuses with `circuit::model::does_not_fit` when they cannot fit.
//!
//! What is counted, with f32 weights: every tensor as f32 (the engine converts each one at load
//! time), plus the largest tensor once more (the unembedding is re-laid out through a second
//! copy, see `linalg::unembedding_layout`). With weights kept in their stored dtype
//! (`stored.rs`): each BF16/F16 matrix at its file size (its mapped pages), every other tensor
//! as f32, plus the largest matrix once more as f32 (the backward pass converts one matrix at a
//! time whole). Activations are not: their size depends on the batch and the circuit, unknown
//! at load time, so a model that passes this check can still run out of memory on a large
//! batch; the check only refuses what cannot work at all.
//!
//! [`choose_stored`] decides `--weights auto`: f32 if the model fits that way (or nothing says
//! what is available), the stored dtype if only that fits.
//!
//! What is available: the smaller of `MemAvailable` (/proc/meminfo: free memory plus the page
//! cache the kernel can reclaim) and, inside a cgroup v2 with a limit (containers, Slurm), the
//! limit minus what the cgroup already uses. `$CIRCUIT_MEMORY_AVAILABLE` (bytes, or with a
//! K/M/G suffix) replaces both: for tests, and for a user who knows better than /proc.

use std::path::Path;

use safetensors::Dtype;

use super::error::ModelError;
use super::stored::WeightsMode;
use super::weights::WeightFiles;
use crate::measure::disk_cache::parse_size;

/// The environment variable that replaces the measured available memory.
pub const AVAILABLE_VAR: &str = "CIRCUIT_MEMORY_AVAILABLE";

/// Bytes the model in `files` will hold once loaded, with f32 weights or (`stored`) with
/// BF16/F16 matrices kept in their stored dtype (see the module docs).
pub(crate) fn resident_bytes(files: &WeightFiles, stored: bool) -> u64 {
    let elements = files.element_counts();
    let largest = elements.iter().copied().max().unwrap_or(0);
    if !stored {
        return (elements.iter().sum::<u64>() + largest) * 4;
    }
    files
        .headers()
        .iter()
        .map(|(_, dtype, shape)| {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            if shape.len() == 2 && kept_stored(*dtype) {
                2 * n
            } else {
                4 * n
            }
        })
        .sum::<u64>()
        + 4 * largest
}

/// Whether a matrix of this dtype stays in its stored dtype (every BF16/F16 matrix does;
/// GPT-NeoX's fused q/k/v is regrouped into q, k and v as stored bytes: `Weight::select_rows`).
fn kept_stored(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::BF16 | Dtype::F16)
}

/// Whether the load keeps BF16/F16 matrices in their stored dtype under `mode`: for `auto`,
/// only if the f32 weights would not fit and the stored ones need less.
pub(crate) fn choose_stored(files: &WeightFiles, mode: WeightsMode) -> Result<bool, ModelError> {
    Ok(match mode {
        WeightsMode::F32 => false,
        WeightsMode::Stored => true,
        WeightsMode::Auto => match available()? {
            None => false,
            Some(available) => {
                let f32_bytes = resident_bytes(files, false);
                f32_bytes > available.bytes && resident_bytes(files, true) < f32_bytes
            }
        },
    })
}

/// Where the available figure came from, for the message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Available {
    pub bytes: u64,
    pub source: String,
}

/// Memory this process may still use, or `None` if nothing says (no /proc, as on macOS).
pub(crate) fn available() -> Result<Option<Available>, ModelError> {
    if let Ok(value) = std::env::var(AVAILABLE_VAR) {
        if !value.trim().is_empty() {
            let bytes = parse_size(&value).ok_or_else(|| ModelError::MemoryAvailableVar {
                value: value.clone(),
            })?;
            return Ok(Some(Available {
                bytes,
                source: format!("${AVAILABLE_VAR}"),
            }));
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable in /proc/meminfo".to_string(),
        });
    let cgroup = cgroup_headroom(Path::new("/sys/fs/cgroup")).map(|bytes| Available {
        bytes,
        source: "the cgroup's memory.max minus memory.current".to_string(),
    });
    Ok(match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(if b.bytes < a.bytes { b } else { a }),
        (a, b) => a.or(b),
    })
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup v2 limit minus its usage; `None` without a limit (`max`) or a cgroup v2 mount.
fn cgroup_headroom(root: &Path) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?; // "max" → no limit
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// Refuses the model in folder `dir` if its estimated resident memory (in the mode
/// `files.keep_stored` says) exceeds what is available.
pub(crate) fn check_fits(files: &WeightFiles, dir: &Path) -> Result<(), ModelError> {
    let Some(available) = available()? else {
        return Ok(()); // nothing to compare with: load, as before
    };
    let needed = resident_bytes(files, files.keep_stored);
    compare(needed, files.keep_stored, &available, dir)
}

fn compare(
    needed: u64,
    stored: bool,
    available: &Available,
    path: &Path,
) -> Result<(), ModelError> {
    if needed <= available.bytes {
        return Ok(());
    }
    Err(ModelError::DoesNotFit {
        path: path.to_path_buf(),
        needed: gib(needed),
        weights: if stored { "stored-dtype" } else { "f32" }.to_string(),
        available: gib(available.bytes),
        source_of_available: available.source.clone(),
    })
}

/// Bytes as GiB with two decimals ("15.03 GiB"); small sizes keep their precision in MiB.
fn gib(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes < 1 << 30 {
        format!("{:.2} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.2} GiB", bytes as f64 / (1024.0 * MIB))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:         3000000 kB\nMemAvailable:   19922944 kB\n";
        assert_eq!(mem_available(text), Some(19922944 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_cgroup_limit_counts_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "1000\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), None);
        std::fs::write(dir.path().join("memory.max"), "8589934592\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), Some(8589934592 - 1000));
        assert_eq!(cgroup_headroom(&dir.path().join("absent")), None);
    }

    #[test]
    fn a_model_larger_than_the_available_memory_is_refused_with_both_sizes() {
        let available = Available {
            bytes: 19 << 30,
            source: "test".to_string(),
        };
        let path = Path::new("models/llama-3-8b");
        assert!(compare(19 << 30, false, &available, path).is_ok());
        // Llama-3-8B as f32: 8.03e9 parameters · 4 bytes, plus its largest tensor again.
        let err = compare((8_030_261_248 + 525_336_576) * 4, false, &available, path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "models/llama-3-8b: the model needs about 31.87 GiB of memory with f32 weights, \
             but 19.00 GiB is available (test)"
        );
    }
}
