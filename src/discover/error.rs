//! Why a discovery cannot run or cannot succeed. Every error a user can see has a code
//! (`circuit::discover::NAME`) and, where a fix is known, a help line.

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum DiscoverError {
    #[error("target faithfulness {target} is outside (0, 1.5]")]
    #[diagnostic(
        code(circuit::discover::target_range),
        help("faithfulness is 0 for the empty circuit and 1 for the full model; ask for a target in (0, 1.5], e.g. --target 0.9")
    )]
    TargetRange { target: f64 },

    #[error("the file defines no circuit `{name}` to discover inside")]
    #[diagnostic(code(circuit::discover::unknown_base), help("{help}"))]
    UnknownBase { name: String, help: String },

    #[error("circuit `{name}` has path edges (or is edge-complete): nodes and QK edges are searched inside a circuit of nodes and QK edges")]
    #[diagnostic(
        code(circuit::discover::base_path_edges),
        help("discover nodes or QK edges inside a circuit of nodes and QK edges (without `edge U -> D` lines, not `edge-complete`), or path edges inside an edge-complete circuit (--granularity path-edges)")
    )]
    BasePathEdges { name: String },

    #[error("circuit `{name}` is not edge-complete, and path edges are searched inside an edge-complete circuit")]
    #[diagnostic(
        code(circuit::discover::base_not_edge_complete),
        help("write the base as `edge-complete circuit {name} {{ edge ... }}`, or discover nodes or QK edges inside it (--granularity nodes|qk-edges)")
    )]
    BaseNotEdgeComplete { name: String },

    #[error("--rank {rank} has no path-edge score")]
    #[diagnostic(
        code(circuit::discover::path_edge_rank),
        help("rank path edges by a gradient score or exactly: --rank eap-ig, eap or exact")
    )]
    PathEdgeRank { rank: &'static str },

    #[error(
        "--attention-threshold filters QK-edge candidates, but the granularity is {granularity}"
    )]
    #[diagnostic(
        code(circuit::discover::threshold_needs_qk_edges),
        help("add --granularity qk-edges, or leave out --attention-threshold")
    )]
    ThresholdNeedsQkEdges { granularity: &'static str },

    #[error("attention threshold {threshold} is outside [0, 1]")]
    #[diagnostic(
        code(circuit::discover::threshold_range),
        help("an attention weight is between 0 and 1; e.g. --attention-threshold 0.05")
    )]
    ThresholdRange { threshold: f64 },

    #[error("no candidate is left to search: {why}")]
    #[diagnostic(
        code(circuit::discover::no_candidates),
        help("lower --attention-threshold, or discover inside a larger --circuit")
    )]
    NoCandidates { why: String },

    #[error("faithfulness is undefined: the full model and the empty circuit have the same mean {metric} ({value})")]
    #[diagnostic(
        code(circuit::discover::undefined_faithfulness),
        help(
            "choose a metric or a reference set under which ablating everything changes the metric"
        )
    )]
    UndefinedFaithfulness { metric: &'static str, value: f64 },

    #[error("the target faithfulness {target} is out of reach: every {n} candidates together reach {all:.4}, the best circuit evaluated {best:.4} (the top {best_k})")]
    #[diagnostic(
        code(circuit::discover::unreachable),
        help("lower --target to at most {all:.4}, use a finer --granularity or a larger --circuit, or pass --best-effort to write the best circuit found")
    )]
    Unreachable {
        target: f64,
        n: usize,
        all: f64,
        best: f64,
        best_k: usize,
    },

    #[error("the written circuit does not compile to the circuit that was evaluated")]
    #[diagnostic(
        code(circuit::discover::written_differs),
        help("this is a bug in `circuit discover`: please report it with the command line")
    )]
    WrittenDiffers,
}
