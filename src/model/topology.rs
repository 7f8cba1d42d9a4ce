//! How a model's blocks are wired to the residual stream, as data: the one owner of the rule
//! "which components' outputs does this input read". Resolve (backward path edges), plan and the
//! path-edge hooks ask [`ResidualTopology::reads`] instead of encoding the wiring themselves.

/// The residual wiring of a layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResidualTopology {
    /// GPT-2, Llama: `resid_mid = resid_pre + attn(resid_pre)`,
    /// `resid_post = resid_mid + mlp(resid_mid)`: the MLP of a layer reads its attention.
    #[default]
    Sequential,
    /// GPT-NeoX / Pythia (`use_parallel_residual: true`): `resid_post = resid_pre +
    /// attn(resid_pre) + mlp(resid_pre)`: attention and MLP of a layer read the same input.
    Parallel,
    /// Gemma 2: wired sequentially, but each block's output passes through a norm of its own
    /// before it is added (`resid_mid = resid_pre + post_norm(attn(norm(resid_pre)))`, likewise
    /// the MLP). The streams read what the sequential wiring reads, but a head's write
    /// `z_h · W_O^h` is no term of them: it enters through its layer's post-attention norm,
    /// together with the layer's other heads, so no path edge can keep or swap it
    /// ([`Unread::PostNorm`]).
    #[serde(rename = "sequential_post_norm")]
    SequentialPostNorm,
}

/// A block that reads or writes the residual stream. All heads of a layer are one attention
/// block: they read the same stream and write at the same point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// Token (+ learned position) embedding: writes only.
    Embed,
    Attention(usize),
    Mlp(usize),
    /// Final norm and unembedding (the logits): reads only.
    Unembed,
}

/// Why a reader does not read a writer's output ([`ResidualTopology::why_unread`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// The writer runs after the reader (or is the reader).
    Backwards,
    /// Under the parallel wiring, the MLP of `layer` reads the stream entering `layer`, which
    /// that layer's attention has not written to.
    ParallelSameLayer { layer: usize },
    /// Under [`ResidualTopology::SequentialPostNorm`] no input is a sum of component outputs
    /// (heads reach it through their layer's post-attention norm), so path edges, which swap
    /// such terms, are not defined: every one is refused, whatever its ends.
    PostNorm,
}

impl ResidualTopology {
    /// `None` when a path edge from `writer` into `reader` can exist: `reader` reads
    /// `writer`'s output ([`Self::reads`]) as a term of its stream; otherwise why not, for the
    /// errors of an edge that cannot exist.
    pub fn why_unread(self, reader: Component, writer: Component) -> Option<Unread> {
        if self.reads(reader, writer) {
            return match self {
                ResidualTopology::SequentialPostNorm => Some(Unread::PostNorm),
                _ => None,
            };
        }
        match (self, writer, reader) {
            (ResidualTopology::Parallel, Component::Attention(w), Component::Mlp(r)) if w == r => {
                Some(Unread::ParallelSameLayer { layer: r })
            }
            _ => Some(Unread::Backwards),
        }
    }

    /// Whether the residual stream `reader` reads contains `writer`'s output (so a path edge
    /// from `writer` into `reader` goes forward).
    pub fn reads(self, reader: Component, writer: Component) -> bool {
        use Component::*;
        match (writer, reader) {
            (Unembed, _) | (_, Embed) => false,
            (Embed, _) | (_, Unembed) => true,
            (Attention(w), Mlp(r)) => match self {
                ResidualTopology::Sequential | ResidualTopology::SequentialPostNorm => w <= r,
                ResidualTopology::Parallel => w < r,
            },
            (Attention(w) | Mlp(w), Attention(r)) | (Mlp(w), Mlp(r)) => w < r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Component::*;
    use super::ResidualTopology::{self, *};
    use super::*;

    /// Every (reader, writer) pair of a 3-layer model whose answer is `true`.
    fn read_pairs(topology: ResidualTopology) -> Vec<(Component, Component)> {
        let mut all = vec![Embed, Unembed];
        for l in 0..3 {
            all.extend([Attention(l), Mlp(l)]);
        }
        let mut pairs = Vec::new();
        for &reader in &all {
            for &writer in &all {
                if topology.reads(reader, writer) {
                    pairs.push((reader, writer));
                }
            }
        }
        pairs
    }

    #[test]
    fn sequential_mlp_reads_its_own_layers_attention() {
        assert!(Sequential.reads(Mlp(1), Attention(1)));
        assert!(Sequential.reads(Mlp(1), Attention(0)));
        assert!(Sequential.reads(Mlp(1), Mlp(0)));
        assert!(!Sequential.reads(Mlp(1), Mlp(1)));
        assert!(!Sequential.reads(Mlp(1), Attention(2)));
        assert!(Sequential.reads(Attention(2), Mlp(1)));
        assert!(!Sequential.reads(Attention(1), Attention(1)));
        assert!(!Sequential.reads(Attention(1), Mlp(1)));
    }

    #[test]
    fn parallel_mlp_does_not_read_its_own_layers_attention() {
        assert!(!Parallel.reads(Mlp(1), Attention(1)));
        assert!(Parallel.reads(Mlp(1), Attention(0)));
        assert!(Parallel.reads(Attention(2), Mlp(1)));
        // The only pair on which the two wirings differ is (MLP L, attention L).
        let sequential = read_pairs(Sequential);
        let parallel = read_pairs(Parallel);
        let only_sequential: Vec<_> = sequential
            .iter()
            .filter(|p| !parallel.contains(p))
            .copied()
            .collect();
        assert_eq!(
            only_sequential,
            vec![
                (Mlp(0), Attention(0)),
                (Mlp(1), Attention(1)),
                (Mlp(2), Attention(2))
            ]
        );
        assert!(parallel.iter().all(|p| sequential.contains(p)));
    }

    #[test]
    fn why_unread_names_the_parallel_same_layer_pair() {
        assert_eq!(Parallel.why_unread(Mlp(1), Attention(0)), None);
        assert_eq!(
            Parallel.why_unread(Mlp(1), Attention(1)),
            Some(Unread::ParallelSameLayer { layer: 1 })
        );
        assert_eq!(
            Parallel.why_unread(Mlp(1), Attention(2)),
            Some(Unread::Backwards)
        );
        assert_eq!(
            Sequential.why_unread(Mlp(1), Mlp(1)),
            Some(Unread::Backwards)
        );
        assert_eq!(Sequential.why_unread(Mlp(1), Attention(1)), None);
    }

    #[test]
    fn post_norm_reads_as_sequential_but_refuses_every_path_edge() {
        assert_eq!(read_pairs(SequentialPostNorm), read_pairs(Sequential));
        for (reader, writer) in read_pairs(SequentialPostNorm) {
            assert_eq!(
                SequentialPostNorm.why_unread(reader, writer),
                Some(Unread::PostNorm),
                "{reader:?} <- {writer:?}"
            );
        }
        assert_eq!(
            SequentialPostNorm.why_unread(Mlp(0), Attention(1)),
            Some(Unread::Backwards)
        );
    }

    #[test]
    fn embed_is_read_by_all_and_unembed_reads_all() {
        for topology in [Sequential, Parallel, SequentialPostNorm] {
            for c in [Attention(0), Mlp(0), Attention(2), Mlp(2), Unembed] {
                assert!(topology.reads(c, Embed), "{c:?}");
            }
            for c in [Embed, Attention(0), Mlp(0), Attention(2), Mlp(2)] {
                assert!(topology.reads(Unembed, c), "{c:?}");
                assert!(!topology.reads(c, Unembed), "{c:?}");
                assert!(!topology.reads(Embed, c), "{c:?}");
            }
            // Nothing reads itself.
            for c in [Embed, Attention(1), Mlp(1), Unembed] {
                assert!(!topology.reads(c, c), "{c:?}");
            }
        }
    }
}
