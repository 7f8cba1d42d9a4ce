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
    /// The prompt's first token, BOS or not: where `..S1` and `*` keys start. The language has no
    /// word for it; it is written only through those forms.
    Start,
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

impl PositionItem {
    /// Every token of the prompt, BOS or not: the key set `*` (`start..END`).
    pub fn every_token() -> PositionItem {
        PositionItem::Range(Position::at(Anchor::Start), Position::at(Anchor::End))
    }

    /// The item as the language writes it: `S1`, `S1..S4`, `..S1` (from the prompt's first
    /// token), `*` (every token).
    pub fn display_name(&self) -> String {
        match self {
            PositionItem::One(p) => p.display_name(),
            item if *item == PositionItem::every_token() => "*".to_string(),
            PositionItem::Range(a, b) if *a == Position::at(Anchor::Start) => {
                format!("..{}", b.display_name())
            }
            PositionItem::Range(a, b) => format!("{}..{}", a.display_name(), b.display_name()),
        }
    }
}

/// The query positions a statement keeps.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PositionSet {
    /// `*`: every position of every prompt.
    All,
    Items(Vec<PositionItem>),
}

impl PositionItem {
    /// The slot labels the item names (`S1..S4`: both ends).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        let (a, b) = match self {
            PositionItem::One(p) => (p, None),
            PositionItem::Range(a, b) => (a, Some(b)),
        };
        std::iter::once(a).chain(b).filter_map(|p| match &p.anchor {
            Anchor::Label { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }
}

impl PositionSet {
    /// The slot labels the set names.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        let items: &[PositionItem] = match self {
            PositionSet::All => &[],
            PositionSet::Items(items) => items,
        };
        items.iter().flat_map(PositionItem::labels)
    }
}

impl Position {
    /// A position with no offset.
    pub fn at(anchor: Anchor) -> Position {
        Position { anchor, offset: 0 }
    }

    /// The position named in messages and tables: `S1`, `S1+1`, `END-1`, `BOS`, and `first(S1)`
    /// for a slot's first token.
    pub fn display_name(&self) -> String {
        let anchor = match &self.anchor {
            Anchor::End => "END".to_string(),
            Anchor::Bos => "BOS".to_string(),
            Anchor::Start => "start".to_string(),
            Anchor::Label {
                name,
                token: SlotToken::Last,
            } => name.clone(),
            Anchor::Label {
                name,
                token: SlotToken::First,
            } => format!("first({name})"),
        };
        match self.offset {
            0 => anchor,
            o if o > 0 => format!("{anchor}+{o}"),
            o => format!("{anchor}{o}"),
        }
    }
}
