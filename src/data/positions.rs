//! Positions as a circuit names them, independent of the `.circuit` syntax. The resolver turns
//! the syntax into these; the dataset resolves them per prompt into token indices.

/// Which token of a (possibly multi-token) slot a label names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotToken {
    /// The slot's last token: the default, since that is where its information is complete.
    Last,
    First,
}

/// What a position is measured from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Anchor {
    /// The prompt's last token (where the next token is predicted).
    End,
    /// Position 0, only when the tokenizer adds a BOS token.
    Bos,
    /// A slot the dataset labels (`S1`, `IO`, ...).
    Label { name: String, token: SlotToken },
}

/// An anchor plus a token offset: `S1+1`, `END-1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Position {
    pub anchor: Anchor,
    pub offset: i64,
}

/// One element of a position list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PositionItem {
    One(Position),
    /// Inclusive range, `S1..S4`.
    Range(Position, Position),
}

/// The query positions a statement keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PositionSet {
    /// `*`: every position of every prompt.
    All,
    Items(Vec<PositionItem>),
}
