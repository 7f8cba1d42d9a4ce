//! One test per rule of grammar/circuit.pest: inputs the rule must accept (whole input
//! consumed) and inputs it must reject. Silent rules (which pest cannot be asked for a span)
//! are tested through the `file` rule. A meta test keeps this list in step with the grammar
//! and checks that every rule has a `///` doc comment.

use circuit::syntax::parser::{CircuitParser, Rule};
use pest::Parser;

/// Whether `rule` matches the whole of `input`.
fn accepts(rule: Rule, input: &str) -> bool {
    match CircuitParser::parse(rule, input) {
        Ok(pairs) => {
            let end = pairs.map(|p| p.as_span().end()).max().unwrap_or(0);
            end == input.len()
        }
        Err(_) => false,
    }
}

/// Whether `input` is a whole valid file.
fn file_ok(input: &str) -> bool {
    CircuitParser::parse(Rule::file, input).is_ok()
}

macro_rules! rule_test {
    ($name:ident, $rule:expr, accept: [$($ok:expr),* $(,)?], reject: [$($bad:expr),* $(,)?]) => {
        #[test]
        fn $name() {
            $( assert!(accepts($rule, $ok), "{:?} should accept {:?}", $rule, $ok); )*
            $( assert!(!accepts($rule, $bad), "{:?} should reject {:?}", $rule, $bad); )*
        }
    };
}

macro_rules! file_test {
    ($name:ident, accept: [$($ok:expr),* $(,)?], reject: [$($bad:expr),* $(,)?]) => {
        #[test]
        fn $name() {
            $( assert!(file_ok($ok), "file should accept {:?}", $ok); )*
            $( assert!(!file_ok($bad), "file should reject {:?}", $bad); )*
        }
    };
}

// Silent rules, through whole files.
file_test!(rule_whitespace, accept: ["", " \t\r\n", "model \"m\"\n\n\tmetric kl"], reject: ["\u{b}"]);
file_test!(rule_comment, accept: ["# only a comment", "model \"m\" # trailing\n# end"], reject: ["// not a comment"]);
file_test!(rule_item, accept: ["model \"m\" metric kl heads g = 1.1 circuit c {}"], reject: ["9.1 @ END"]);
file_test!(rule_ident_char, accept: ["heads g_1 = 1.1"], reject: ["heads g-1 = 1.1"]);
file_test!(rule_literal, accept: ["dataset d = g(a = \"s\", b = true, c = -1.5)"], reject: ["dataset d = g(a = b)"]);
file_test!(rule_heads_atom, accept: ["heads g = 1.1, other, 0..2.*"], reject: ["heads g = 1"]);
file_test!(rule_statement, accept: ["circuit c { 1.1 @ END mlp 2 edge 1.1: S1 -> END edge 1.1 -> logits drop 1.1 expect ratio > 0 }"], reject: ["circuit c { model \"m\" }"]);
file_test!(rule_component, accept: ["circuit c { drop 1.1, g, mlp 3, embed }"], reject: ["circuit c { drop logits }"]);
file_test!(rule_downstream, accept: ["circuit c { edge 1.1 -> logits edge 1.1 -> mlp 2 edge 1.1 -> 2.2.k }"], reject: ["circuit c { edge 1.1 -> 2.2 }"]);
file_test!(rule_anchor, accept: ["circuit c { 1.1 @ END, BOS, first(S1), IO }"], reject: ["circuit c { 1.1 @ 3 }"]);
file_test!(rule_primary, accept: ["circuit c { expect (ratio) > 0.5 }"], reject: ["circuit c { expect [ratio] > 0.5 }"]);

rule_test!(rule_file, Rule::file, accept: ["", "model \"m\"\n"], reject: ["model"]);
rule_test!(rule_keyword, Rule::keyword, accept: ["model", "END", "first", "embed"], reject: ["models", "End", "embedding"]);
rule_test!(rule_ident, Rule::ident, accept: ["movers", "_x", "S1", "models"], reject: ["1x", "model", "END", ""]);
rule_test!(rule_uint, Rule::uint, accept: ["0", "123"], reject: ["-1", "1.5", ""]);
rule_test!(rule_number, Rule::number, accept: ["0.8", "1e-3", "2E+5", "7"], reject: ["-1", ".5", "1."]);
rule_test!(rule_string, Rule::string, accept: ["\"a b\"", "\"\"", "\"../x/y\""], reject: ["\"open", "\"a\nb\"", "'a'"]);
rule_test!(rule_string_inner, Rule::string_inner, accept: ["abc", ""], reject: ["a\"b"]);
rule_test!(rule_kw_model, Rule::kw_model, accept: ["model"], reject: ["modelx"]);
rule_test!(rule_kw_dataset, Rule::kw_dataset, accept: ["dataset"], reject: ["datasets"]);
rule_test!(rule_kw_reference, Rule::kw_reference, accept: ["reference"], reject: ["ref"]);
rule_test!(rule_kw_ablate, Rule::kw_ablate, accept: ["ablate"], reject: ["ablated"]);
rule_test!(rule_kw_metric, Rule::kw_metric, accept: ["metric"], reject: ["metrics"]);
rule_test!(rule_kw_align, Rule::kw_align, accept: ["align"], reject: ["aligned"]);
rule_test!(rule_kw_heads, Rule::kw_heads, accept: ["heads"], reject: ["head"]);
rule_test!(rule_kw_circuit, Rule::kw_circuit, accept: ["circuit"], reject: ["circuits"]);
rule_test!(rule_kw_extends, Rule::kw_extends, accept: ["extends"], reject: ["extend"]);
rule_test!(rule_kw_edge, Rule::kw_edge, accept: ["edge"], reject: ["edges"]);
rule_test!(rule_kw_mlp, Rule::kw_mlp, accept: ["mlp"], reject: ["mlps"]);
rule_test!(rule_kw_drop, Rule::kw_drop, accept: ["drop"], reject: ["dropped"]);
rule_test!(rule_kw_expect, Rule::kw_expect, accept: ["expect"], reject: ["expected"]);
rule_test!(rule_kw_by, Rule::kw_by, accept: ["by"], reject: ["bye"]);
rule_test!(rule_kw_and, Rule::kw_and, accept: ["and"], reject: ["andy"]);
rule_test!(rule_kw_mlps, Rule::kw_mlps, accept: ["mlps"], reject: ["mlp"]);
rule_test!(rule_kw_edges, Rule::kw_edges, accept: ["edges"], reject: ["edge"]);
rule_test!(rule_kw_first, Rule::kw_first, accept: ["first"], reject: ["firstly"]);
rule_test!(rule_model_setting, Rule::model_setting, accept: ["model \"toy-seqcont\"", "model   \"../m\""], reject: ["model toy", "model"]);
rule_test!(rule_dataset_setting, Rule::dataset_setting, accept: ["dataset d = ioi", "dataset d = \"p.jsonl\"", "dataset d = seqcont.numerals(n = 64, seed = 0)"], reject: ["dataset = ioi", "dataset d ioi", "dataset END = ioi"]);
rule_test!(rule_generator_call, Rule::generator_call, accept: ["ioi", "ioi()", "a.b(n = 1,)", "a.b(n = 1, s = \"x\")"], reject: ["a.b(n)", "a.(n = 1)"]);
rule_test!(rule_dotted_name, Rule::dotted_name, accept: ["seqcont.numerals", "ioi"], reject: ["seqcont.", "1abc"]);
rule_test!(rule_param, Rule::param, accept: ["n = 64", "form = \"bare\"", "wrap=false"], reject: ["n 64", "= 3"]);
rule_test!(rule_boolean, Rule::boolean, accept: ["true", "false"], reject: ["True", "truely"]);
rule_test!(rule_signed_number, Rule::signed_number, accept: ["-1", "0.5", "-2e3"], reject: ["+1", "--1"]);
rule_test!(rule_reference_setting, Rule::reference_setting, accept: ["reference d.corrupt", "reference d.clean", "reference other"], reject: ["reference d.random", "reference"]);
rule_test!(rule_reference_target, Rule::reference_target, accept: ["d", "d.corrupt"], reject: ["d . corrupt", "d.x"]);
rule_test!(rule_reference_part, Rule::reference_part, accept: ["corrupt", "clean"], reject: ["cleaner"]);
rule_test!(rule_ablate_setting, Rule::ablate_setting, accept: ["ablate heads by mean", "ablate heads and mlps by zero", "ablate edges by knockout"], reject: ["ablate mlps by mean", "ablate heads by knockout", "ablate edges by zero"]);
rule_test!(rule_node_ablation, Rule::node_ablation, accept: ["heads by resample", "heads and mlps by mean"], reject: ["heads mean"]);
rule_test!(rule_scope, Rule::scope, accept: ["heads", "heads and mlps"], reject: ["mlps", "heads and"]);
rule_test!(rule_node_method, Rule::node_method, accept: ["mean", "zero", "resample"], reject: ["average", "means"]);
rule_test!(rule_edge_ablation, Rule::edge_ablation, accept: ["edges by mean", "edges by knockout"], reject: ["edges by resample"]);
rule_test!(rule_edge_method, Rule::edge_method, accept: ["mean", "knockout"], reject: ["zero"]);
rule_test!(rule_metric_setting, Rule::metric_setting, accept: ["metric logit_diff", "metric kl"], reject: ["metric logitdiff", "metric"]);
rule_test!(rule_metric_name, Rule::metric_name, accept: ["logit_diff", "prob", "logprob", "kl", "accuracy"], reject: ["probs", "acc"]);
rule_test!(rule_align_setting, Rule::align_setting, accept: ["align by position", "align by label"], reject: ["align position", "align by token"]);
rule_test!(rule_align_mode, Rule::align_mode, accept: ["position", "label"], reject: ["labels"]);
rule_test!(rule_group_def, Rule::group_def, accept: ["heads movers = 9.1, 9.6", "heads all = *.*"], reject: ["heads movers 9.1", "heads = 9.1", "heads movers ="]);
rule_test!(rule_head_list, Rule::head_list, accept: ["9.1", "9.1, g, 0..3.*"], reject: ["9.1,", ", 9.1"]);
rule_test!(rule_head_spec, Rule::head_spec, accept: ["9.1", "9.*", "0..3.*", "*.*", "9.0..3"], reject: ["9", "9 . 1", "9.1.2", "a.1"]);
rule_test!(rule_selector, Rule::selector, accept: ["3", "0..4", "*"], reject: ["-1", "0..", "0 .. 4"]);
rule_test!(rule_wildcard, Rule::wildcard, accept: ["*"], reject: ["**"]);
rule_test!(rule_index_range, Rule::index_range, accept: ["0..4"], reject: ["0...4", "0.4"]);
rule_test!(rule_group_ref, Rule::group_ref, accept: ["movers"], reject: ["9.1", "edge"]);
rule_test!(rule_layer_list, Rule::layer_list, accept: ["0..4, 6, 8..11", "*"], reject: ["0..4,", "a"]);
rule_test!(rule_circuit_def, Rule::circuit_def, accept: ["circuit c {}", "circuit c extends b { 9.1 @ END }", "edge-complete circuit c { edge embed -> logits }"], reject: ["circuit {}", "circuit c { 9.1 @ END", "circuit c extends {}", "circuit c edge-complete {}"]);
rule_test!(rule_edge_complete, Rule::edge_complete, accept: ["edge-complete"], reject: ["edge_complete", "edge-completed", "edge"]);
rule_test!(rule_embed, Rule::embed, accept: ["embed"], reject: ["embeds", "embedding", "input"]);
rule_test!(rule_extends_clause, Rule::extends_clause, accept: ["extends base"], reject: ["extends", "extends 9.1"]);
rule_test!(rule_head_node, Rule::head_node, accept: ["9.1 @ END", "g, 9.1 @ S1+1, S2+1", "9.1"], reject: ["9.1 @", "@ END"]);
rule_test!(rule_mlp_node, Rule::mlp_node, accept: ["mlp 3", "mlp 0..4, 6 @ *"], reject: ["mlp", "mlp @ END"]);
rule_test!(rule_qk_edge, Rule::qk_edge, accept: ["edge 0.2: S1 -> S1+1", "edge g: S1 -> S1+1, S2 -> S2+1", "edge 4.4: S1..S3 -> END"], reject: ["edge 0.2: S1", "edge 0.2 S1 -> END", "edge 0.2:"]);
rule_test!(rule_qk_pair, Rule::qk_pair, accept: ["S1 -> S1+1", "first(S1)..S3 -> END-1", "* -> END", "..S1 -> S2"], reject: ["S1 => S2", "S1 ->", "S1 -> *"]);
file_test!(rule_qk_keys, accept: ["circuit c { edge 1.1: * -> END, ..S1 -> S2, S1..S3 -> END }"], reject: ["circuit c { edge 1.1: S1.. -> END }", "circuit c { edge 1.1: *, S1 -> END }"]);
rule_test!(rule_path_edge, Rule::path_edge, accept: ["edge 4.4 -> 9.1.q", "edge 4.4, mlp 3 -> logits @ END", "edge mlp 2 -> mlp 5"], reject: ["edge 4.4 -> 9.1", "edge -> logits", "edge 4.4 -> logits @"]);
rule_test!(rule_component_list, Rule::component_list, accept: ["4.4, g, mlp 3"], reject: ["4.4,"]);
rule_test!(rule_mlp_ref, Rule::mlp_ref, accept: ["mlp 3", "mlp 0..2"], reject: ["mlp"]);
rule_test!(rule_logits, Rule::logits, accept: ["logits"], reject: ["logit"]);
rule_test!(rule_head_input_ref, Rule::head_input_ref, accept: ["9.1.q", "9.*.k", "movers.v"], reject: ["9.1.x", "9.1 .q", "9.1"]);
rule_test!(rule_head_input, Rule::head_input, accept: ["q", "k", "v"], reject: ["qk", "o"]);
rule_test!(rule_drop_stmt, Rule::drop_stmt, accept: ["drop 9.1", "drop g, mlp 3"], reject: ["drop", "drop logits"]);
rule_test!(rule_expect_stmt, Rule::expect_stmt, accept: ["expect faithfulness >= 0.8", "expect logit_diff > base.logit_diff - 0.1 * 2"], reject: ["expect faithfulness", "expect faithfulness == 1", "expect >= 1"]);
rule_test!(rule_comparison, Rule::comparison, accept: ["<", "<=", ">", ">="], reject: ["==", "=<"]);
rule_test!(rule_positions, Rule::positions, accept: ["*", "END", "S1, S2+1, S3..S4"], reject: ["S1,", "*, END"]);
rule_test!(rule_all_positions, Rule::all_positions, accept: ["*"], reject: ["all"]);
rule_test!(rule_position_item, Rule::position_item, accept: ["S1", "S1..S4", "first(S1)..END-1", "..S4"], reject: ["S1..", ".."]);
rule_test!(rule_up_to, Rule::up_to, accept: ["..S1", "..END-1", ".. first(S2)"], reject: ["..", "S1..", "..*"]);
rule_test!(rule_position, Rule::position, accept: ["S1", "S1+1", "END-1", "END - 1", "first(S2)+3", "BOS"], reject: ["S1+", "+1", "S1+-1"]);
rule_test!(rule_end_anchor, Rule::end_anchor, accept: ["END"], reject: ["ENDS", "end"]);
rule_test!(rule_bos_anchor, Rule::bos_anchor, accept: ["BOS"], reject: ["BOSS"]);
rule_test!(rule_first_of, Rule::first_of, accept: ["first(S1)", "first ( IO )"], reject: ["first(END)", "first S1", "first()"]);
rule_test!(rule_label, Rule::label, accept: ["S1", "IO"], reject: ["END", "1S"]);
rule_test!(rule_offset, Rule::offset, accept: ["+1", "-12", "+ 2"], reject: ["1", "+", "+-1"]);
rule_test!(rule_offset_sign, Rule::offset_sign, accept: ["+", "-"], reject: ["*"]);
rule_test!(rule_expr, Rule::expr, accept: ["1", "a + b - c", "-(a - b) * 2", "base.faithfulness - 0.01"], reject: ["a +", "* a", "(a"]);
rule_test!(rule_add_op, Rule::add_op, accept: ["+", "-"], reject: ["*"]);
rule_test!(rule_term, Rule::term, accept: ["a * b * 2", "--a"], reject: ["a *"]);
rule_test!(rule_mul_op, Rule::mul_op, accept: ["*"], reject: ["/"]);
rule_test!(rule_factor, Rule::factor, accept: ["-a", "--1", "(a + b)"], reject: ["-", "a b"]);
rule_test!(rule_neg, Rule::neg, accept: ["-"], reject: ["+"]);
rule_test!(rule_quantity, Rule::quantity, accept: ["faithfulness", "base.ratio", "full.logit_diff"], reject: ["a.b.c", "a .b", "1.5"]);

/// Every rule named in the grammar has a test above and a `///` doc comment.
#[test]
fn every_rule_is_documented_and_tested() {
    let grammar = include_str!("../grammar/circuit.pest");
    let this_file = include_str!("language_grammar.rs");
    let lines: Vec<&str> = grammar.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || line.starts_with(' ')
        {
            continue;
        }
        rules += 1;
        assert!(
            i > 0 && lines[i - 1].trim_start().starts_with("///"),
            "rule `{name}` has no /// doc comment"
        );
        let test_name = format!("fn_rule_{}", name.to_lowercase()).replace("fn_", "");
        assert!(
            this_file.contains(&format!("({test_name},")),
            "rule `{name}` has no test `{test_name}`"
        );
    }
    assert!(rules > 80, "found only {rules} rules");
}
