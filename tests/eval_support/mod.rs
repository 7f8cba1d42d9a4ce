//! Shared by the evaluation tests: hand-made datasets and circuits built without the language
//! front end.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use circuit::data::positions::{Anchor, Position, PositionItem, PositionSet, SlotToken};
use circuit::measure::{EvalPrompts, Targets};
use circuit::model::Model;
use circuit::plan::PromptPositions;

mod fixed_positions;
use circuit::resolve::bound::{BoundCircuit, HeadId, QkEdge};
pub use fixed_positions::FixedPositions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn stories_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/models/stories260K"
    ))
}

pub fn gpt2_tiny_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/gpt2-tiny"
    ))
}

/// A labelled prompt set: ids, targets and fixed label positions (`S1` at 2, `S2` at 4).
pub struct HandData {
    pub clean: Vec<Vec<u32>>,
    pub reference: Vec<Vec<u32>>,
    pub targets: Vec<Targets>,
    pub positions: Vec<FixedPositions>,
}

impl HandData {
    /// The clean prompts as an evaluator takes them.
    pub fn eval_prompts(&self) -> EvalPrompts<'static> {
        EvalPrompts {
            ids: self.clean.clone(),
            targets: self.targets.clone(),
            positions: self
                .positions
                .iter()
                .map(|p| Box::new(p.clone()) as Box<dyn PromptPositions>)
                .collect(),
        }
    }
}

/// Real stories, as many reference prompts as clean ones (resample pairs one-to-one): each
/// text tokenized (BOS added) and cut to `len` tokens; the answer is the
/// token that follows in the text, the distractor the prompt's last token.
pub fn stories_data(model: &Model, len: usize) -> HandData {
    let clean_texts = [
        "Once upon a time, there was a little girl named Lily. She",
        "One day, a big dog went to the park to play with a ball",
        "Tom and Sue were best friends. They liked to play in the sand",
        "The sun was shining and the birds were singing in the trees",
        "Once upon a time, there was a boy who loved to eat apples",
        "Lily saw a cat in the garden. The cat was very hungry and sad",
    ];
    let reference_texts = [
        "Once there was a big red car that could drive very fast on roads",
        "A little bird sat on a tree. It wanted to fly up to the sky",
        "Mom made a cake for the party. Everyone was happy to eat it",
        "The girl found a shiny stone near the river and took it home",
        "Ben had a toy boat. He put it in the bath and it floated away",
        "It was a cold day, so the children wore their warm hats outside",
    ];
    let encode = |t: &str| model.tokenizer.encode(t).expect("tokenizes").ids;
    let mut clean = Vec::new();
    let mut targets = Vec::new();
    for text in clean_texts {
        let ids = encode(text);
        assert!(ids.len() > len, "{text:?} is too short");
        targets.push(Targets {
            answer: ids[len],
            distractor: ids[len - 1],
        });
        clean.push(ids[..len].to_vec());
    }
    let reference = reference_texts
        .iter()
        .map(|t| {
            let ids = encode(t);
            assert!(ids.len() >= len, "{t:?} is too short");
            ids[..len].to_vec()
        })
        .collect();
    HandData {
        positions: fixed_positions(clean.len(), len),
        clean,
        reference,
        targets,
    }
}

/// Random token ids (seeded) for a random-weight model.
pub fn random_data(vocab: u32, len: usize, n_clean: usize, n_ref: usize, seed: u64) -> HandData {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let prompt = |rng: &mut ChaCha8Rng| {
        (0..len)
            .map(|_| rng.random_range(1..vocab))
            .collect::<Vec<u32>>()
    };
    let clean: Vec<Vec<u32>> = (0..n_clean).map(|_| prompt(&mut rng)).collect();
    let reference = (0..n_ref).map(|_| prompt(&mut rng)).collect();
    let targets = (0..n_clean)
        .map(|_| Targets {
            answer: rng.random_range(1..vocab),
            distractor: rng.random_range(1..vocab),
        })
        .collect();
    HandData {
        positions: fixed_positions(n_clean, len),
        clean,
        reference,
        targets,
    }
}

fn fixed_positions(n: usize, len: usize) -> Vec<FixedPositions> {
    (0..n)
        .map(|b| FixedPositions {
            len,
            has_bos: true,
            labels: [("S1".to_string(), 2), ("S2".to_string(), 4)].into(),
            name: format!("prompt {b}"),
        })
        .collect()
}

pub fn label(name: &str, offset: i64) -> Position {
    Position {
        anchor: Anchor::Label {
            name: name.to_string(),
            token: SlotToken::Last,
        },
        offset,
    }
}

pub fn end(offset: i64) -> Position {
    Position {
        anchor: Anchor::End,
        offset,
    }
}

pub fn bos(offset: i64) -> Position {
    Position {
        anchor: Anchor::Bos,
        offset,
    }
}

pub fn at(positions: &[Position]) -> PositionSet {
    PositionSet::Items(positions.iter().cloned().map(PositionItem::One).collect())
}

pub fn h(layer: usize, head: usize) -> HeadId {
    HeadId { layer, head }
}

pub fn circuit(name: &str) -> BoundCircuit {
    BoundCircuit {
        name: name.to_string(),
        edge_complete: false,
        heads: BTreeMap::new(),
        mlps: BTreeMap::new(),
        qk_edges: vec![],
        path_edges: vec![],
        expectations: vec![],
        span: 0..0,
    }
}

pub fn edge(head: HeadId, key: Position, query: Position) -> QkEdge {
    QkEdge {
        head,
        keys: PositionItem::One(key),
        queries: PositionItem::One(query),
        span: 0..0,
    }
}

/// Every head and MLP of the model at every position.
pub fn everything(name: &str, n_layers: usize, n_heads: usize) -> BoundCircuit {
    let mut c = circuit(name);
    for layer in 0..n_layers {
        for head in 0..n_heads {
            c.heads.insert(h(layer, head), PositionSet::All);
        }
        c.mlps.insert(layer, PositionSet::All);
    }
    c
}
