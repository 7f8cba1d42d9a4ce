//! The attention summary of `circuit heads`: previous-token, duplicate-token and induction
//! scores of every head, measured on the full model's attention patterns over a dataset's
//! prompts (docs/semantics.md, "Head characterization"). Pure Rust: no feature needed.

use ndarray::ArrayView2;

use crate::model::{ForwardOptions, Model, ModelError, NoInterventions};

/// Prompts per forward pass with the activation cache (the cache holds every intermediate).
const PROMPTS_PER_FORWARD: usize = 16;

/// One head's three scores and how many query positions each is averaged over. A score is
/// `None` when no query of the dataset qualifies (no prompt repeats a token, for the duplicate
/// and induction scores): then it is undefined, not zero.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AttentionScores {
    /// Mean over queries `q ≥ 1` of `A[q, q−1]`.
    pub previous_token: Option<f64>,
    /// Mean over the queries with an earlier occurrence of their token of the attention to
    /// those earlier occurrences, `Σ_{k<q, t_k = t_q} A[q, k]`.
    pub duplicate_token: Option<f64>,
    /// Mean over the same queries of the attention to the tokens right after the earlier
    /// occurrences, `Σ_{k ∈ {j+1 : j<q, t_j = t_q}} A[q, k]`.
    pub induction: Option<f64>,
    /// Queries the previous-token score averages over (every position but the first).
    pub previous_token_queries: usize,
    /// Queries the duplicate-token and induction scores average over.
    pub repeated_token_queries: usize,
}

/// Running sums of one head's scores over prompts (f64, in prompt order).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreSums {
    pub previous: f64,
    pub previous_queries: usize,
    pub duplicate: f64,
    pub induction: f64,
    pub repeated_queries: usize,
}

impl ScoreSums {
    /// Adds one prompt: `pattern` `(T, T)` of one head (row `q`: the query's attention over keys
    /// `0..=q`), `tokens` the prompt's `T` ids.
    pub fn add_prompt(&mut self, pattern: ArrayView2<f32>, tokens: &[u32]) {
        let t = tokens.len();
        debug_assert!(pattern.nrows() >= t && pattern.ncols() >= t);
        for q in 1..t {
            self.previous += pattern[[q, q - 1]] as f64;
            self.previous_queries += 1;
        }
        for q in 1..t {
            let earlier: Vec<usize> = (0..q).filter(|&j| tokens[j] == tokens[q]).collect();
            if earlier.is_empty() {
                continue;
            }
            self.repeated_queries += 1;
            self.duplicate += earlier.iter().map(|&k| pattern[[q, k]] as f64).sum::<f64>();
            // Keys right after an earlier occurrence: distinct, at most `q` (an immediate
            // repeat `t_{q-1} = t_q` makes the query itself the token after it).
            self.induction += earlier
                .iter()
                .map(|&j| pattern[[q, j + 1]] as f64)
                .sum::<f64>();
        }
    }

    pub fn scores(&self) -> AttentionScores {
        let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
        AttentionScores {
            previous_token: mean(self.previous, self.previous_queries),
            duplicate_token: mean(self.duplicate, self.repeated_queries),
            induction: mean(self.induction, self.repeated_queries),
            previous_token_queries: self.previous_queries,
            repeated_token_queries: self.repeated_queries,
        }
    }
}

/// Every head's scores on `prompts` (token ids), from the unedited model's attention patterns,
/// indexed `[layer][head]`.
pub fn attention_summary(
    model: &Model,
    prompts: &[Vec<u32>],
) -> Result<Vec<Vec<AttentionScores>>, ModelError> {
    let (n_layers, n_heads) = (model.config.n_layers, model.config.n_heads);
    let mut sums = vec![vec![ScoreSums::default(); n_heads]; n_layers];
    let options = ForwardOptions {
        cache: true,
        ..ForwardOptions::default()
    };
    for chunk in prompts.chunks(PROMPTS_PER_FORWARD) {
        let output = model.forward(chunk, &options, &NoInterventions)?;
        let cache = output.cache.expect("the forward was asked for its cache");
        for (layer, layer_sums) in sums.iter_mut().enumerate() {
            let pattern = &cache.layers[layer].pattern; // (B, H, T, T)
            for (head, head_sums) in layer_sums.iter_mut().enumerate() {
                for (b, tokens) in chunk.iter().enumerate() {
                    let one = pattern.slice(ndarray::s![b, head, .., ..]); // (T, T)
                    head_sums.add_prompt(one, tokens);
                }
            }
        }
    }
    Ok(sums
        .iter()
        .map(|layer| layer.iter().map(ScoreSums::scores).collect())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// A 5-token prompt `a b a b c` with a hand-written causal pattern; every score below is
    /// worked out by hand from the rows.
    #[test]
    fn hand_checked_prompt() {
        let tokens = [7, 8, 7, 8, 9];
        let pattern = array![
            [1.0, 0.0, 0.0, 0.0, 0.0],
            [0.6, 0.4, 0.0, 0.0, 0.0],
            [0.5, 0.2, 0.3, 0.0, 0.0],
            [0.1, 0.2, 0.3, 0.4, 0.0],
            [0.2, 0.2, 0.2, 0.2, 0.2f32],
        ];
        let mut sums = ScoreSums::default();
        sums.add_prompt(pattern.view(), &tokens);
        let scores = sums.scores();
        // Previous token: rows 1..4 at q−1: 0.6, 0.2, 0.3, 0.2.
        assert_eq!(scores.previous_token_queries, 4);
        assert!((scores.previous_token.unwrap() - (0.6 + 0.2 + 0.3 + 0.2) / 4.0).abs() < 1e-7);
        // Repeated: q = 2 (a, earlier at 0) and q = 3 (b, earlier at 1); `c` has none.
        assert_eq!(scores.repeated_token_queries, 2);
        // Duplicate: A[2,0] = 0.5, A[3,1] = 0.2.
        assert!((scores.duplicate_token.unwrap() - (0.5 + 0.2) / 2.0).abs() < 1e-7);
        // Induction: A[2,1] = 0.2 (after the earlier a), A[3,2] = 0.3 (after the earlier b).
        assert!((scores.induction.unwrap() - (0.2 + 0.3) / 2.0).abs() < 1e-7);
    }

    #[test]
    fn an_immediate_repeat_points_induction_at_the_query_itself() {
        let tokens = [5, 5];
        let pattern = array![[1.0, 0.0], [0.25, 0.75f32]];
        let mut sums = ScoreSums::default();
        sums.add_prompt(pattern.view(), &tokens);
        let scores = sums.scores();
        assert_eq!(scores.duplicate_token, Some(0.25));
        assert_eq!(scores.induction, Some(0.75));
    }

    #[test]
    fn no_repeated_token_leaves_the_scores_undefined() {
        let tokens = [1, 2, 3];
        let pattern = array![[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5f32]];
        let mut sums = ScoreSums::default();
        sums.add_prompt(pattern.view(), &tokens);
        let scores = sums.scores();
        assert_eq!(scores.repeated_token_queries, 0);
        assert_eq!(scores.duplicate_token, None);
        assert_eq!(scores.induction, None);
        assert!((scores.previous_token.unwrap() - 0.4).abs() < 1e-7);
        // A one-token prompt has no previous-token query either.
        let mut single = ScoreSums::default();
        single.add_prompt(array![[1.0f32]].view(), &[4]);
        assert_eq!(single.scores().previous_token, None);
    }
}
