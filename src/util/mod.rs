//! Small helpers shared by every stage.

pub mod outputs;

use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically: a temporary file in the same folder is written,
/// flushed and then renamed over `path`, so a reader never sees a half-written file and a
/// failure leaves the old file untouched.
///
/// A symlink is written through: its target gets the contents and the link stays a link
/// (`circuit fmt link.circuit`). The file ends up with the permissions a plain `File::create`
/// would give it: those of the file it replaces, or `0o666` less the umask for a new file. (A
/// temporary file alone would be `0o600`, and a report or picture written for others to read
/// would not be readable.)
///
/// Errors never name the temporary file, which the user never asked for: a missing folder says
/// so, anything else is the operating system's message (callers add the destination's name).
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |out| out.write_all(contents))
}

/// [`write_atomic`] of what `write` writes, streamed into the temporary file (buffered) instead
/// of held whole first: `circuit scores --format json` of GPT-2 small's path edges is 136 MB of
/// text. An error from `write` leaves `path` untouched, as any other failure does.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let path = &through_symlinks(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("the folder {} does not exist", dir.display()),
        ));
    }
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Created with this mode, the umask applies as it does to `File::create`.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(without_temporary_path)?;
    if let Ok(existing) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(existing.permissions())?;
    }
    {
        let mut buffered = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buffered)?;
        buffered.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| without_temporary_path(e.error))?;
    Ok(())
}

/// The file a chain of symlinks ends at (`path` itself when it is not a link). A dangling link's
/// target is where the file will be created.
pub(crate) fn through_symlinks(path: &Path) -> std::io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    // As many hops as Linux follows before ELOOP.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                path = match path.parent() {
                    Some(parent) => parent.join(target),
                    None => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(std::io::Error::other(format!(
        "too many levels of symbolic links at {}",
        path.display()
    )))
}

/// `tempfile` appends "at path .../.tmpXXXX" to its errors; keep the operating system's error.
pub(crate) fn without_temporary_path(e: std::io::Error) -> std::io::Error {
    let inner = e
        .get_ref()
        .and_then(|payload| payload.source())
        .and_then(|source| source.downcast_ref::<std::io::Error>());
    match inner {
        Some(os) => match os.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(os.kind(), os.to_string()),
        },
        None => e,
    }
}

/// The candidate closest to `word`, if any is close: one edit away, or similar by
/// Jaro-Winkler (≥ 0.8). Ties go to the fewer edits, then the more similar, then the candidate
/// whose trailing number is nearest (`S5` → `S4`). `word` itself is never suggested.
///
/// Every "did you mean" of the tool goes through here, so that names are suggested alike in
/// every stage.
pub fn did_you_mean<'n>(
    word: &str,
    candidates: impl IntoIterator<Item = &'n str>,
) -> Option<String> {
    fn trailing_number(s: &str) -> Option<i64> {
        let digits: String = s.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
        digits.chars().rev().collect::<String>().parse().ok()
    }
    let target = trailing_number(word);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let distance = strsim::levenshtein(word, c);
            let similarity = strsim::jaro_winkler(word, c);
            let number_gap = match (target, trailing_number(c)) {
                (Some(a), Some(b)) => (a - b).unsigned_abs(),
                _ => u64::MAX,
            };
            (distance, similarity, number_gap, c)
        })
        .filter(|(distance, similarity, _, _)| *distance <= 1 || *similarity >= 0.8)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)))
        .map(|(_, _, _, c)| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_prefers_one_edit_then_the_nearest_number() {
        assert_eq!(
            did_you_mean("S5", ["S1", "S4", "S6"]),
            Some("S4".to_string())
        );
        assert_eq!(
            did_you_mean("logit_dif", ["logit_diff", "prob"]),
            Some("logit_diff".to_string())
        );
        assert_eq!(did_you_mean("xyz", ["logit_diff", "prob"]), None);
        assert_eq!(
            did_you_mean("S1", ["S1"]),
            None,
            "the word itself is not a suggestion"
        );
    }

    #[test]
    fn writes_and_replaces_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        // Only the file itself is left: no temporary files behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_streamed_write_that_fails_halfway_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.json");
        write_atomic(&path, b"old").unwrap();
        // More than the buffer holds is written before the failure, so some of it reached the
        // temporary file.
        let e = write_atomic_with(&path, |out| {
            out.write_all(&vec![b'x'; 1 << 20])?;
            Err(std::io::Error::other("the serializer failed"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "the serializer failed");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // And a streamed write that succeeds replaces the contents.
        write_atomic_with(&path, |out| {
            out.write_all(b"new, ")?;
            out.write_all(b"streamed")
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new, streamed");
    }

    #[test]
    fn errors_name_no_temporary_file() {
        // Not under a `.tmp…` folder, so any `.tmp` in a message is write_atomic's own file.
        let dir = tempfile::Builder::new().prefix("w").tempdir().unwrap();
        assert!(!dir.path().to_string_lossy().contains(".tmp"));
        let missing = dir.path().join("no-such-folder").join("report.txt");
        let e = write_atomic(&missing, b"x").unwrap_err().to_string();
        assert!(
            e.contains("no-such-folder") && e.contains("does not exist") && !e.contains(".tmp"),
            "{e}"
        );
        // A destination that is a folder: the rename fails; the message is the OS's alone.
        let e = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(!e.contains(".tmp"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through_and_stays_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real.circuit");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.circuit");
        std::os::unix::fs::symlink("real.circuit", &link).unwrap();
        let chain = dir.path().join("chain.circuit");
        std::os::unix::fs::symlink(&link, &chain).unwrap();
        write_atomic(&chain, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(std::fs::symlink_metadata(&chain)
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link creates its target.
        let dangling = dir.path().join("dangling.txt");
        std::os::unix::fs::symlink("created.txt", &dangling).unwrap();
        write_atomic(&dangling, b"made").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("created.txt")).unwrap(),
            b"made"
        );
        assert!(std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[cfg(unix)]
    #[test]
    fn permissions_are_those_of_a_plainly_created_file_or_of_the_file_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let plain = dir.path().join("plain.txt");
        std::fs::File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic.txt");
        write_atomic(&atomic, b"x").unwrap();
        assert_eq!(
            mode(&atomic),
            mode(&plain),
            "a new file gets 0o666 less the umask"
        );

        std::fs::set_permissions(&atomic, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&atomic, b"y").unwrap();
        assert_eq!(
            mode(&atomic),
            0o640,
            "a replaced file keeps its permissions"
        );
    }
}
