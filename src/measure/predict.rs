//! What `circuit run` shows of a model on free text: the most likely next tokens of each
//! prompt (optionally a greedy continuation), and heads' attention patterns on one prompt.

use crate::model::{ForwardOptions, Model, NoInterventions};

/// One prompt's next-token prediction.
pub struct Prediction {
    pub prompt: String,
    /// Token ids, BOS included when the tokenizer adds it.
    pub ids: Vec<u32>,
    /// `(id, probability)`, most likely first.
    pub top: Vec<(u32, f64)>,
    /// The next-token logits `(V,)`.
    pub logits: Vec<f32>,
    /// `generate` greedily chosen tokens, decoded, when asked for.
    pub continuation: Option<String>,
}

/// The `top` most likely next tokens of every prompt (one batched forward), and with
/// `generate: Some(n)` each prompt's greedy continuation of `n` tokens.
pub fn predict(
    model: &Model,
    prompts: Vec<String>,
    top: usize,
    generate: Option<usize>,
) -> miette::Result<Vec<Prediction>> {
    let ids = prompts
        .iter()
        .map(|p| model.encode_prompt(p))
        .collect::<Result<Vec<_>, _>>()?;
    let output = model.forward(&ids, &ForwardOptions::default(), &NoInterventions)?;
    let mut predictions = Vec::with_capacity(prompts.len());
    for (b, (prompt, ids)) in prompts.into_iter().zip(ids).enumerate() {
        let logits = output.logits.slice(ndarray::s![b, 0, ..]).to_vec(); // (V,)
        let top = top_k(&logits, top);
        let continuation = match generate {
            Some(n) => {
                let generated = model.generate_greedy(&ids, n)?;
                Some(model.tokenizer.decode(&generated[ids.len()..]))
            }
            None => None,
        };
        predictions.push(Prediction {
            prompt,
            ids,
            top,
            logits,
            continuation,
        });
    }
    Ok(predictions)
}

/// The `k` most likely tokens under softmax(logits), most likely first (ties: lower id first).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i as u32, (logits[i] as f64 - max).exp() / total))
        .collect()
}

/// Each head's attention pattern on `ids` (one forward pass with the activation cache):
/// `pattern[q][k]`, query rows, key columns. Heads must exist in the model.
pub fn attention_patterns(
    model: &Model,
    ids: &[u32],
    heads: &[(usize, usize)],
) -> miette::Result<Vec<Vec<Vec<f32>>>> {
    let options = ForwardOptions {
        cache: true,
        ..ForwardOptions::default()
    };
    let output = model.forward(&[ids.to_vec()], &options, &NoInterventions)?;
    let cache = output.cache.expect("the forward was asked for its cache");
    Ok(heads
        .iter()
        .map(|&(layer, head)| {
            let pattern = &cache.layers[layer].pattern; // (B, H, T, T)
            (0..ids.len())
                .map(|q| (0..ids.len()).map(|k| pattern[[0, head, q, k]]).collect())
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_by_probability() {
        let top = top_k(&[0.0, 2.0, 1.0, 2.0], 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        let total: f64 = [0.0f64, 2.0, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!((top[0].1 - 2.0f64.exp() / total).abs() < 1e-12);
    }
}
