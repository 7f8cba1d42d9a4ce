//! Every diagnostic code the resolver emits, in one place. `docs/language.md` lists them in its
//! code table; the test below keeps the two in step (every code here is documented, every
//! documented resolver code exists here).

/// Defines one constant per code (`circuit::resolve::NAME`) and [`ALL`], the list of them.
macro_rules! codes {
    ($($name:ident = $code:literal,)*) => {
        $(pub const $name: &str = concat!("circuit::resolve::", $code);)*
        /// Every code above, in the order defined.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

codes! {
    BACKWARD_EDGE = "backward_edge",
    BAD_OVERRIDE = "bad_override",
    DATASET = "dataset",
    DROP_MISSING = "drop_missing",
    DUPLICATE_CIRCUIT = "duplicate_circuit",
    DUPLICATE_DATASET = "duplicate_dataset",
    DUPLICATE_GROUP = "duplicate_group",
    DUPLICATE_HEAD = "duplicate_head",
    DUPLICATE_MLP = "duplicate_mlp",
    DUPLICATE_PARAM = "duplicate_param",
    DUPLICATE_SETTING = "duplicate_setting",
    EMBED_OUTSIDE_EDGE_COMPLETE = "embed_outside_edge_complete",
    EMPTY_RANGE = "empty_range",
    EXTENDS_CYCLE = "extends_cycle",
    FORM_MISMATCH = "form_mismatch",
    GROUP_CYCLE = "group_cycle",
    KEY_AFTER_QUERY = "key_after_query",
    KEY_OUTSIDE_WINDOW = "key_outside_window",
    IMPOSSIBLE_EXPECTATION = "impossible_expectation",
    MODEL = "model",
    NO_BOS = "no_bos",
    NO_CIRCUIT = "no_circuit",
    NODE_IN_EDGE_COMPLETE = "node_in_edge_complete",
    OFFSET_AFTER_END = "offset_after_end",
    OFFSET_BEFORE_BOS = "offset_before_bos",
    REFERENCE = "reference",
    RESERVED_NAME = "reserved_name",
    UNKNOWN_CIRCUIT = "unknown_circuit",
    UNKNOWN_DATASET = "unknown_dataset",
    UNKNOWN_GROUP = "unknown_group",
    UNKNOWN_HEAD = "unknown_head",
    UNKNOWN_LABEL = "unknown_label",
    UNKNOWN_MLP = "unknown_mlp",
    UNKNOWN_QUANTITY = "unknown_quantity",
    UNKNOWN_SETTING = "unknown_setting",
    UNUSED_DATASET = "unused_dataset",
    UNUSED_GROUP = "unused_group",
}

/// Reading a `.circuit` file failed (before any parsing).
pub const READ: &str = "circuit::check::read";

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The codes in docs/language.md's table. A row may list several codes of one stage, the
    /// first in full and the rest by their last segment (`circuit::resolve::a`, `b`).
    fn documented_codes() -> BTreeSet<String> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/language.md");
        let text = std::fs::read_to_string(path).expect("docs/language.md is readable");
        let mut out = BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("| `circuit::")) {
            let first_cell = line.split('|').nth(1).unwrap_or_default();
            let mut prefix = String::new();
            for name in first_cell.split('`').skip(1).step_by(2) {
                if let Some(i) = name.rfind("::") {
                    prefix = name[..i + 2].to_string();
                    out.insert(name.to_string());
                } else {
                    out.insert(format!("{prefix}{name}"));
                }
            }
        }
        out
    }

    #[test]
    fn every_code_is_documented_and_every_documented_code_exists() {
        let documented = documented_codes();
        let defined: BTreeSet<String> = super::ALL
            .iter()
            .chain(std::iter::once(&super::READ))
            .map(|c| c.to_string())
            .collect();
        let undocumented: Vec<_> = defined.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "codes missing from docs/language.md: {undocumented:?}"
        );
        let documented_resolve: BTreeSet<String> = documented
            .into_iter()
            .filter(|c| c.starts_with("circuit::resolve::") || c.starts_with("circuit::check::"))
            .collect();
        let stale: Vec<_> = documented_resolve.difference(&defined).collect();
        assert!(
            stale.is_empty(),
            "documented codes the resolver never emits: {stale:?}"
        );
    }

    /// Every code is written through a constant of this module: no resolver file spells a code
    /// inline (which could drift from the table).
    #[test]
    fn no_code_is_spelled_outside_this_module() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/resolve");
        for entry in std::fs::read_dir(dir).expect("src/resolve is readable") {
            let path = entry.expect("a directory entry").path();
            if path.file_name().is_some_and(|n| n == "diagnostics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            for stage in ["\"circuit::resolve::", "\"circuit::check::"] {
                assert!(
                    !text.contains(stage),
                    "{} spells a diagnostic code inline; use resolve::diagnostics",
                    path.display()
                );
            }
        }
    }
}
