use super::*;
use crate::model::ModelConfig;

fn config(n_layers: usize, n_heads: usize, d_model: usize) -> ModelConfig {
    let text = format!(
        r#"{{"model_type": "gpt2", "n_layer": {n_layers}, "n_head": {n_heads}, "n_embd": {d_model}, "vocab_size": 10, "n_positions": 8}}"#
    );
    ModelConfig::from_json_str(&text, std::path::Path::new("config.json")).unwrap()
}

fn graph(cfg: &str, nodes: &str, edges: &str) -> String {
    format!(r#"{{"cfg": {cfg}, "nodes": {{{nodes}}}, "edges": {{{edges}}}}}"#)
}

const CFG: &str = r#"{"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": false, "d_model": 8}"#;

#[test]
fn every_edge_name_parses_back_to_its_ends() {
    let residual = ResidualTopology::Sequential;
    let names = every_edge_name(3, 4, residual);
    // Per input, the components before it: 12 heads × (q, k, v) + 3 MLPs + logits.
    let mut expected = 0;
    for layer in 0..3 {
        expected += 12 * (1 + layer * 5); // each head input of layer L reads embed and L×(4+1)
        expected += 1 + layer * 5 + 4; // the MLP also reads its own layer's heads
    }
    expected += 1 + 3 * 5;
    assert_eq!(names.len(), expected);
    for name in &names {
        let (from, to) = parse_edge(name, 3, 4, residual).unwrap();
        assert_eq!(
            &format!("{}->{}", upstream_name(from), downstream_name(to)),
            name
        );
    }
    assert_eq!(
        parse_edge("input->a2.h3<k>", 3, 4, residual).unwrap(),
        (
            Upstream::Embed,
            Downstream::Head(HeadId { layer: 2, head: 3 }, HeadInput::K)
        )
    );
}

#[test]
fn bad_edge_names_say_what_is_wrong() {
    let residual = ResidualTopology::Sequential;
    let cases = [
        ("a0.h1", "no `->`"),
        ("a0.h1->a1.h0", "a{L}.h{H}<q|k|v>"),
        ("a0.h1->a1.h0<x>", "`x` is not q, k or v"),
        ("a3.h0->logits", "layer 3 is outside the model (0..3)"),
        ("a0.h9->logits", "head 9 is outside the model (0..4)"),
        ("m1->a1.h0<q>", "goes backwards"),
        ("logits->m0", "is not `a{L}.h{H}`"),
        ("a0.h-1->logits", "`-1` is not a head index"),
    ];
    for (name, reason) in cases {
        let err = parse_edge(name, 3, 4, residual).unwrap_err();
        assert!(err.contains(reason), "{name}: {err}");
    }
}

#[test]
fn a_cfg_that_does_not_match_the_model_is_a_coded_error() {
    let model = config(2, 2, 8);
    for (cfg, field) in [
        (
            r#"{"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": false, "d_model": 8}"#,
            "n_layers",
        ),
        (
            r#"{"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 8}"#,
            "n_heads",
        ),
        (
            r#"{"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": false, "d_model": 768}"#,
            "d_model",
        ),
        (
            r#"{"n_layers": 2, "n_heads": 2, "parallel_attn_mlp": true, "d_model": 8}"#,
            "parallel_attn_mlp",
        ),
    ] {
        let err = read_graph("g.json", &graph(cfg, "", ""), &model).unwrap_err();
        assert!(
            matches!(&err, ImportError::CfgMismatch { field: f, .. } if *f == field),
            "{err:?}"
        );
        let code = miette::Diagnostic::code(&err).unwrap().to_string();
        assert_eq!(code, "circuit::import::cfg_mismatch");
    }
    let err = read_graph("g.json", "{", &model).unwrap_err();
    assert!(matches!(err, ImportError::Json { .. }));
    let err = read_graph("g.json", r#"{"cfg": {}}"#, &model).unwrap_err();
    assert!(matches!(err, ImportError::Format { .. }), "{err:?}");
}

#[test]
fn kept_edges_are_those_in_the_graph_with_both_nodes_in_it() {
    let model = config(2, 2, 8);
    let nodes = r#""input": {"in_graph": true}, "a0.h0": {"in_graph": true}, "a0.h1": {"in_graph": false}, "m0": {"in_graph": true}, "logits": {"in_graph": true}"#;
    let edges = r#""input->a0.h0<q>": {"in_graph": true, "score": 1.0},
        "a0.h0->logits": {"in_graph": true},
        "a0.h0->m0": {"in_graph": false},
        "a0.h1->logits": {"in_graph": true},
        "input->a0.h1<v>": {"in_graph": true},
        "m0->a1.h1<k>": {"in_graph": true}"#;
    let g = read_graph("g.json", &graph(CFG, nodes, edges), &model).unwrap();
    let h = |layer, head| HeadId { layer, head };
    assert_eq!(
        g.kept,
        vec![
            (Upstream::Embed, Downstream::Head(h(0, 0), HeadInput::Q)),
            (Upstream::Mlp(0), Downstream::Head(h(1, 1), HeadInput::K)),
            (Upstream::Head(h(0, 0)), Downstream::Logits),
        ]
    );
    assert_eq!(g.removed_by_nodes, 2);
    assert_eq!(g.n_edges, 6);
    let text = circuit_text(&g, "g.json", "m", "ioi", "imported");
    assert!(text.contains("edge-complete circuit imported {\n  edge embed -> 0.0.q\n  edge mlp 0 -> 1.1.k\n  edge 0.0 -> logits\n}\n"), "{text}");
    assert!(
        text.contains("2 edges marked in_graph were left out"),
        "{text}"
    );
    // Canonical: `circuit fmt` leaves it alone.
    let source = crate::syntax::SourceFile::new("x.circuit", text.clone());
    assert_eq!(
        crate::syntax::format_file(&crate::syntax::parse(&source).unwrap()),
        text
    );

    let err = read_graph(
        "g.json",
        &graph(CFG, r#""a9.h0": {"in_graph": true}"#, ""),
        &model,
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::NodeName { .. }), "{err:?}");
    let err = read_graph(
        "g.json",
        &graph(CFG, "", r#""a0.h0->a0.h1<q>": {"in_graph": true}"#),
        &model,
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::EdgeName { .. }), "{err:?}");
    let code = miette::Diagnostic::code(&err).unwrap().to_string();
    assert_eq!(code, "circuit::import::edge_name");
}
