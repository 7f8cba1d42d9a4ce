//! `circuit cache info|clear`, and the cache flags of the commands that evaluate
//! (`--no-cache`, `--verbose`). The cache itself is the library's (`measure::disk_cache`).

use std::process::ExitCode;

use circuit::measure::disk_cache::{cache_dir, cache_max_bytes, DiskCache};

/// Where the cache lives, for `--help`.
const LOCATION: &str = "$CIRCUIT_CACHE_DIR, else $XDG_CACHE_HOME/circuit, else ~/.cache/circuit; CIRCUIT_CACHE_DIR=off disables it; bounded by $CIRCUIT_CACHE_MAX_BYTES (default 2G), least recently used entries go first";

#[derive(clap::Args, Debug)]
#[command(after_help = format!("The result cache: {LOCATION}."))]
pub struct Args {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Print the cache's location, bound, entries and size.
    Info,
    /// Remove every cache entry (other files in the folder are left alone).
    Clear,
}

/// `--no-cache` and `--verbose`, on every command that reads the result cache.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// Neither read nor write the result cache (kept in $CIRCUIT_CACHE_DIR, else
    /// $XDG_CACHE_HOME/circuit, else ~/.cache/circuit; see `circuit cache info`).
    #[arg(long)]
    pub no_cache: bool,
    /// Say on stderr what the result cache did: entries read, entries that do not verify (and
    /// are recomputed), entries evicted.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

impl CacheArgs {
    /// The cache folder and bound in force: `None` with `--no-cache` or `CIRCUIT_CACHE_DIR=off`.
    pub fn cache(&self) -> miette::Result<Option<DiskCache>> {
        if self.no_cache {
            return Ok(None);
        }
        let max_bytes = cache_max_bytes()?;
        Ok(cache_dir().map(|dir| DiskCache { dir, max_bytes }))
    }
}

pub fn execute(args: Args) -> miette::Result<ExitCode> {
    let Some(cache) = (CacheArgs::default()).cache()? else {
        println!("the result cache is off (CIRCUIT_CACHE_DIR=off)");
        return Ok(ExitCode::SUCCESS);
    };
    match args.command {
        CacheCommand::Info => {
            let info = cache.info();
            println!("location  {}", info.dir.display());
            println!(
                "entries   {} ({} reference values, {} per-prompt metrics)",
                info.reference_entries + info.metrics_entries,
                info.reference_entries,
                info.metrics_entries
            );
            println!("size      {}", human_bytes(info.bytes));
            println!(
                "bound     {} (CIRCUIT_CACHE_MAX_BYTES; least recently used entries go first)",
                human_bytes(info.max_bytes)
            );
        }
        CacheCommand::Clear => {
            let (entries, bytes) = cache.clear().map_err(|e| {
                miette::miette!(
                    code = "circuit::cache::clear",
                    "cannot clear the cache in {}: {e}",
                    cache.dir.display()
                )
            })?;
            println!(
                "removed {entries} entries ({}) from {}",
                human_bytes(bytes),
                cache.dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `1234567` → `1.2 MiB (1234567 bytes)`.
fn human_bytes(bytes: u64) -> String {
    let units = [("GiB", 30), ("MiB", 20), ("KiB", 10)];
    match units.iter().find(|(_, shift)| bytes >= 1 << shift) {
        Some((unit, shift)) => format!(
            "{:.1} {unit} ({bytes} bytes)",
            bytes as f64 / (1u64 << shift) as f64
        ),
        None => format!("{bytes} bytes"),
    }
}
