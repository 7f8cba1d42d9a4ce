//! Small helpers shared by every stage.

use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically: a temporary file in the same folder is written,
/// flushed and then renamed over `path`, so a reader never sees a half-written file and a
/// failure leaves the old file untouched.
///
/// The file ends up with the permissions a plain `File::create` would give it: those of the
/// file it replaces, or `0o666` less the umask for a new file. (A temporary file alone would be
/// `0o600`, and a report or picture written for others to read would not be readable.)
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Created with this mode, the umask applies as it does to `File::create`.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    if let Ok(existing) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(existing.permissions())?;
    }
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
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
