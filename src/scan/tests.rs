//! Unit tests of the scan's bookkeeping (shards, part files, merge); the engines are tested on
//! real models in tests/scan_engines.rs and tests/scan_cli.rs.

use super::*;

#[test]
fn shards_parse_as_i_of_n_and_split_the_candidates_disjointly() {
    assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
    assert_eq!(Shard::parse(" 1 / 1 ").unwrap(), Shard::WHOLE);
    for bad in ["3/2", "0/2", "1/0", "2", "a/b", "-1/2", "1/2/3", ""] {
        assert!(
            matches!(Shard::parse(bad), Err(ScanError::BadShard { .. })),
            "{bad:?}"
        );
    }
    // Every candidate in exactly one part.
    let parts: Vec<Shard> = (1..=3).map(|index| Shard { index, count: 3 }).collect();
    for c in 0..20 {
        assert_eq!(parts.iter().filter(|s| s.holds(c)).count(), 1);
    }
}

fn result(shard: Shard, indices: &[usize], key: &str) -> ScanResult {
    ScanResult {
        key: key.to_string(),
        shard,
        n_candidates: 4,
        granularity: ScanGranularity::Nodes,
        engine: Engine::Incremental,
        base: None,
        settings: StoredSettings {
            metric: "logit_diff".into(),
            ablation: "mean".into(),
            edge_ablation: "edge_mean".into(),
            scope: "heads".into(),
            reference: "r (2 prompts)".into(),
            alignment: "position".into(),
        },
        provenance: Provenance {
            model: "m".into(),
            model_sha256: "0".into(),
            tokenizer_sha256: "1".into(),
            dataset: "d".into(),
            dataset_sha256: "2".into(),
            n_prompts: 2,
            reference: "r".into(),
            n_reference: 2,
            overrides: Vec::new(),
        },
        // serde_json's default decimal parsing reads this one back 1 ulp off (seen in a merge).
        full: 19.256428509950638,
        empty: -1e-300,
        base_metric: 19.256428509950638,
        slots: vec!["S1".into(), "END".into()],
        n_prompts: 2,
        n_layers: 1,
        n_heads: 2,
        d_model: 8,
        entries: indices
            .iter()
            .map(|&index| ScanEntry {
                index,
                layer: 0,
                head: Some(index / 2),
                query: ["S1", "END"][index % 2].into(),
                key: None,
                metric: 1.0 / (index as f64 + 3.0),
                n_prompts: 2,
            })
            .collect(),
    }
}

#[test]
fn part_files_round_trip_bit_for_bit_and_parts_merge_into_the_whole() {
    let half = |i| Shard { index: i, count: 2 };
    let (a, b) = (result(half(1), &[0, 2], "k"), result(half(2), &[1, 3], "k"));
    let read = |r: &ScanResult| ScanResult::from_part_json(&r.to_part_json(), "p").unwrap();
    assert_eq!(read(&a), a);
    let merged = merge(vec![read(&b), read(&a)], &["b".into(), "a".into()]).unwrap();
    assert_eq!(merged, result(Shard::WHOLE, &[0, 1, 2, 3], "k"));
    // The report's settings come back as the names reports print.
    assert_eq!(merged.settings_report().metric, "logit_diff");
    assert_eq!(merged.settings_report().scope, "heads");
}

#[test]
fn parts_of_other_scans_missing_or_doubled_parts_and_non_parts_are_refused() {
    let half = |i| Shard { index: i, count: 2 };
    let names = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
    let (a, b) = (result(half(1), &[0, 2], "k"), result(half(2), &[1, 3], "k"));
    let other = result(half(2), &[1, 3], "another scan");
    assert!(matches!(
        merge(vec![a.clone(), other], &names(2)),
        Err(ScanError::MergeMismatch { .. })
    ));
    let thirds = result(Shard { index: 2, count: 3 }, &[1], "k");
    assert!(matches!(
        merge(vec![a.clone(), thirds], &names(2)),
        Err(ScanError::MergeMismatch { .. })
    ));
    assert!(matches!(
        merge(vec![a.clone()], &names(1)),
        Err(ScanError::MergeIncomplete { .. })
    ));
    assert!(matches!(
        merge(vec![a.clone(), a.clone(), b.clone()], &names(3)),
        Err(ScanError::MergeIncomplete { .. })
    ));
    assert!(matches!(
        merge(Vec::new(), &[]),
        Err(ScanError::MergeIncomplete { .. })
    ));
    for text in ["{}", "not json", "{\"format\": \"circuit scan part v1\"}"] {
        assert!(matches!(
            ScanResult::from_part_json(text, "x"),
            Err(ScanError::NotAPart { .. })
        ));
    }
    let mut beyond = b.clone();
    beyond.shard.index = 3; // a hand-edited part
    assert!(matches!(
        merge(vec![a.clone(), beyond], &names(2)),
        Err(ScanError::NotAPart { .. })
    ));
    let mut doubled = b.clone();
    doubled.entries[1].index = 0;
    assert!(matches!(
        merge(vec![a.clone(), doubled], &names(2)),
        Err(ScanError::MergeIncomplete { .. })
    ));
    assert!(merge(vec![b, a], &names(2)).is_ok());
}
