//! The circuit graph over positions: columns are the example prompt's token positions (named by
//! the dataset's labels, the prompt's tokens underneath; runs of positions where nothing is kept
//! folded into one narrow column), rows are layers (a sub-row per head, one per MLP), a node per
//! kept head × query position and per kept MLP × position, QK edges as arcs from the key column
//! to the query column in the head's row, path edges from the upstream to the downstream
//! component at the positions they carry.
//!
//! [`layout`] computes what is drawn (the nodes and edges as data, which tests compare with the
//! circuit); [`draw`] turns it into inline SVG.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::data::positions::{PositionItem, PositionSet};
use crate::data::TokenizedPrompt;
use crate::model::HeadInput;
use crate::report::svg::{escape, number, text_width, token_label, truncate};
use crate::resolve::bound::{BoundCircuit, Downstream, HeadId, Scope, Upstream};

use super::ModelShape;

/// Models with at most this many heads get a sub-row for every head, the ablated ones faint;
/// larger ones only for the heads the circuit names.
pub const ALL_HEAD_ROWS_UP_TO: usize = 48;
/// A layer with more named heads than this is drawn as one grouped sub-row.
pub const MAX_HEAD_ROWS_PER_LAYER: usize = 6;

/// A node's place in the graph: a head (or a layer's group of heads), an MLP, or the logits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    Head(HeadId),
    /// Every named head of a layer in one sub-row.
    Group(usize),
    Mlp(usize),
    Logits,
}

/// A kept component at one position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub row: Row,
    /// The components the node stands for (one, or a group's heads kept at this position).
    pub members: Vec<Upstream>,
    pub position: usize,
}

/// A QK edge between two positions through one head (or heads of a group).
#[derive(Clone, Debug, PartialEq)]
pub struct QkArc {
    pub row: Row,
    pub heads: Vec<HeadId>,
    pub key: usize,
    pub query: usize,
}

/// A path edge at one position.
#[derive(Clone, Debug, PartialEq)]
pub struct PathLink {
    pub from: Upstream,
    pub to: Downstream,
    pub position: usize,
}

/// A column: one position, or a fold of positions where nothing is kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Column {
    Position(usize),
    Fold(Vec<usize>),
}

/// How a diff marks a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Added,
    Removed,
    /// The component is on both sides, at other positions.
    Moved,
}

impl Mark {
    fn class(self) -> &'static str {
        match self {
            Mark::Added => "added",
            Mark::Removed => "removed",
            Mark::Moved => "moved",
        }
    }
}

/// What to draw of one circuit.
pub struct GraphInput<'a> {
    pub circuit: &'a BoundCircuit,
    pub shape: ModelShape,
    pub scope: Scope,
    pub example: &'a TokenizedPrompt,
    /// The example prompt's tokens as text, one per position.
    pub tokens: &'a [String],
    /// Scores of kept nodes (attribution, discovery) when computed: drawn as node size and
    /// listed on hover. `None` today.
    pub scores: Option<&'a BTreeMap<(Upstream, usize), f64>>,
    /// Diff marks per component and position.
    pub marks: Option<&'a BTreeMap<(Upstream, usize), Mark>>,
}

/// The graph as data.
#[derive(Debug)]
pub struct Layout {
    pub columns: Vec<Column>,
    /// Sub-rows per layer, in drawing order (top to bottom).
    pub rows: Vec<(usize, Vec<Row>)>,
    pub logits_row: bool,
    pub nodes: Vec<Node>,
    pub qk_arcs: Vec<QkArc>,
    pub path_links: Vec<PathLink>,
    /// Kept nodes per component, for faint "ablated here" dots.
    pub kept: BTreeSet<(Upstream, usize)>,
    /// Sentences for the reader: grouping, folding, MLPs not drawn, edges drawn nowhere.
    pub notes: Vec<String>,
    /// Position names per token index (labels, END, offsets the circuit uses).
    pub names: BTreeMap<usize, Vec<String>>,
    /// The dataset's own names per token index (labels, END, BOS).
    pub labels: BTreeMap<usize, Vec<String>>,
}

impl Layout {
    /// Nothing of the circuit is kept: it is the empty circuit.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.qk_arcs.is_empty() && self.path_links.is_empty()
    }
}

fn resolve(example: &TokenizedPrompt, set: &PositionSet, what: &str) -> Result<Vec<usize>, String> {
    example
        .resolve(set)
        .map(|s| s.into_iter().collect())
        .map_err(|e| format!("{what}: {e}"))
}

fn resolve_item(
    example: &TokenizedPrompt,
    item: &PositionItem,
    what: &str,
) -> Result<Vec<usize>, String> {
    example
        .resolve_item(item)
        .map(|s| s.into_iter().collect())
        .map_err(|e| format!("{what}: {e}"))
}

/// Every position a set names, by name, so columns can be headed by the circuit's own words.
fn name_positions(
    example: &TokenizedPrompt,
    set: &PositionSet,
    names: &mut BTreeMap<usize, Vec<String>>,
) {
    if let PositionSet::Items(items) = set {
        for item in items {
            name_item(example, item, names);
        }
    }
}

fn name_item(
    example: &TokenizedPrompt,
    item: &PositionItem,
    names: &mut BTreeMap<usize, Vec<String>>,
) {
    let ends = match item {
        PositionItem::One(p) => vec![p],
        PositionItem::Range(a, b) => vec![a, b],
    };
    for p in ends {
        if let Ok(i) = example.resolve_position(p) {
            let list = names.entry(i).or_default();
            let name = p.display_name();
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
}

/// Lays out one circuit on its example prompt.
pub fn layout(input: &GraphInput) -> Layout {
    let c = input.circuit;
    let ex = input.example;
    let t = ex.len();
    let mut notes = Vec::new();
    let mut names: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for p in ex.standard_positions() {
        if let Ok(i) = ex.resolve_position(&p) {
            names.entry(i).or_default().push(p.display_name());
        }
    }
    let labels = names.clone();

    let mlps_drawn = input.scope == Scope::HeadsAndMlps;
    let mut kept: BTreeSet<(Upstream, usize)> = BTreeSet::new();
    for (head, set) in &c.heads {
        name_positions(ex, set, &mut names);
        match resolve(ex, set, &format!("head {head}")) {
            Ok(ps) => kept.extend(ps.into_iter().map(|p| (Upstream::Head(*head), p))),
            Err(e) => notes.push(e),
        }
    }
    if mlps_drawn {
        for (layer, set) in &c.mlps {
            name_positions(ex, set, &mut names);
            match resolve(ex, set, &format!("mlp {layer}")) {
                Ok(ps) => kept.extend(ps.into_iter().map(|p| (Upstream::Mlp(*layer), p))),
                Err(e) => notes.push(e),
            }
        }
    } else {
        notes.push(
            "MLPs are never ablated under `ablate heads` (every MLP keeps its output everywhere); they are not drawn unless a path edge names one."
                .to_string(),
        );
    }
    let kept_at = |u: Upstream| -> BTreeSet<usize> {
        match u {
            // In an edge-complete circuit every component computes everywhere; its edges
            // decide what reaches each input.
            _ if c.edge_complete => (0..t).collect(),
            Upstream::Mlp(_) if !mlps_drawn => (0..t).collect(),
            _ => kept
                .iter()
                .filter(|(k, _)| *k == u)
                .map(|(_, p)| *p)
                .collect(),
        }
    };

    let mut qk: BTreeSet<(HeadId, usize, usize)> = BTreeSet::new();
    for e in &c.qk_edges {
        name_item(ex, &e.keys, &mut names);
        name_item(ex, &e.queries, &mut names);
        let what = format!("edge {}", e.head);
        match (
            resolve_item(ex, &e.keys, &what),
            resolve_item(ex, &e.queries, &what),
        ) {
            (Ok(keys), Ok(queries)) => {
                for &q in &queries {
                    for &k in keys.iter().filter(|&&k| k <= q) {
                        qk.insert((e.head, k, q));
                    }
                }
            }
            (Err(e), _) | (_, Err(e)) => notes.push(e),
        }
    }

    let mut links: Vec<PathLink> = Vec::new();
    if c.path_edges.iter().any(|e| e.from == Upstream::Embed) {
        notes.push(
            "edges from `embed` are not drawn (the graph has no row for the embedding)".to_string(),
        );
    }
    for e in c.path_edges.iter().filter(|e| e.from != Upstream::Embed) {
        name_positions(ex, &e.positions, &mut names);
        let stated: BTreeSet<usize> = match resolve(ex, &e.positions, "path edge") {
            Ok(ps) => ps.into_iter().collect(),
            Err(err) => {
                notes.push(err);
                continue;
            }
        };
        // Where the edge carries anything: the upstream component is kept there, and the
        // downstream input is read there (a head's query at its kept positions, its keys and
        // values anywhere, the logits at END).
        let downstream: BTreeSet<usize> = match e.to {
            Downstream::Head(h, HeadInput::Q) => kept_at(Upstream::Head(h)),
            Downstream::Head(_, _) => (0..t).collect(),
            Downstream::Mlp(l) => kept_at(Upstream::Mlp(l)),
            Downstream::Logits => [ex.end()].into(),
        };
        let at: Vec<usize> = stated
            .iter()
            .filter(|p| kept_at(e.from).contains(p) && downstream.contains(p))
            .copied()
            .collect();
        if at.is_empty() {
            notes.push(format!(
                "edge {} -> {} carries nothing on the example prompt (its upstream is not kept where its downstream reads): not drawn",
                e.from,
                e.to
            ));
        }
        for position in at {
            let link = PathLink {
                from: e.from,
                to: e.to,
                position,
            };
            if !links.contains(&link) {
                links.push(link);
            }
        }
    }

    // Rows: every head of a small model, else the heads the circuit names; a crowded layer is
    // one grouped row.
    let mut named_heads: BTreeSet<HeadId> = kept
        .iter()
        .filter_map(|(u, _)| match u {
            Upstream::Head(h) => Some(*h),
            Upstream::Mlp(_) | Upstream::Embed => None,
        })
        .collect();
    named_heads.extend(qk.iter().map(|(h, _, _)| *h));
    for l in &links {
        if let Upstream::Head(h) = l.from {
            named_heads.insert(h);
        }
        if let Downstream::Head(h, _) = l.to {
            named_heads.insert(h);
        }
    }
    let mut mlp_rows: BTreeSet<usize> = BTreeSet::new();
    if mlps_drawn {
        mlp_rows.extend(0..input.shape.n_layers);
    }
    for l in &links {
        if let Upstream::Mlp(m) = l.from {
            mlp_rows.insert(m);
        }
        if let Downstream::Mlp(m) = l.to {
            mlp_rows.insert(m);
        }
    }
    let every_head = input.shape.n_layers * input.shape.n_heads <= ALL_HEAD_ROWS_UP_TO;
    if !every_head {
        notes.push(format!(
            "The model has {} heads: only the {} the circuit names are drawn; every other head is ablated everywhere.",
            input.shape.n_layers * input.shape.n_heads,
            named_heads.len()
        ));
    }
    let mut grouped: BTreeSet<usize> = BTreeSet::new();
    let mut rows = Vec::new();
    for layer in 0..input.shape.n_layers {
        let heads: Vec<HeadId> = if every_head {
            (0..input.shape.n_heads)
                .map(|head| HeadId { layer, head })
                .collect()
        } else {
            named_heads
                .iter()
                .filter(|h| h.layer == layer)
                .copied()
                .collect()
        };
        let named_here = named_heads.iter().filter(|h| h.layer == layer).count();
        let mut layer_rows: Vec<Row> = if !every_head && named_here > MAX_HEAD_ROWS_PER_LAYER {
            grouped.insert(layer);
            vec![Row::Group(layer)]
        } else {
            heads.into_iter().map(Row::Head).collect()
        };
        if mlp_rows.contains(&layer) {
            layer_rows.push(Row::Mlp(layer));
        }
        if !layer_rows.is_empty() {
            rows.push((layer, layer_rows));
        }
    }
    if !grouped.is_empty() {
        notes.push(format!(
            "Too many heads to draw one row each in layer{} {}: each is one grouped row (a node lists the heads kept at its position; hover to read them).",
            if grouped.len() == 1 { "" } else { "s" },
            grouped
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let row_of_head = |h: HeadId| {
        if grouped.contains(&h.layer) {
            Row::Group(h.layer)
        } else {
            Row::Head(h)
        }
    };

    let mut nodes: Vec<Node> = Vec::new();
    for &(u, position) in &kept {
        let row = match u {
            Upstream::Head(h) => row_of_head(h),
            Upstream::Mlp(l) => Row::Mlp(l),
            Upstream::Embed => unreachable!("kept holds heads and MLPs only"),
        };
        match nodes
            .iter_mut()
            .find(|n| n.row == row && n.position == position)
        {
            Some(n) => n.members.push(u),
            None => nodes.push(Node {
                row,
                members: vec![u],
                position,
            }),
        }
    }
    let logits_row = links.iter().any(|l| l.to == Downstream::Logits);

    let mut qk_arcs: Vec<QkArc> = Vec::new();
    for &(h, key, query) in &qk {
        let row = row_of_head(h);
        match qk_arcs
            .iter_mut()
            .find(|a| a.row == row && a.key == key && a.query == query)
        {
            Some(a) => a.heads.push(h),
            None => qk_arcs.push(QkArc {
                row,
                heads: vec![h],
                key,
                query,
            }),
        }
    }

    // Columns: every position where something is drawn; runs of the others folded.
    let mut used: BTreeSet<usize> = kept.iter().map(|(_, p)| *p).collect();
    used.extend(qk.iter().flat_map(|(_, k, q)| [*k, *q]));
    used.extend(links.iter().map(|l| l.position));
    let mut columns = Vec::new();
    let mut fold: Vec<usize> = Vec::new();
    for p in 0..t {
        if used.contains(&p) {
            if !fold.is_empty() {
                columns.push(Column::Fold(std::mem::take(&mut fold)));
            }
            columns.push(Column::Position(p));
        } else {
            fold.push(p);
        }
    }
    if !fold.is_empty() {
        columns.push(Column::Fold(fold));
    }
    let folded: usize = columns
        .iter()
        .map(|c| match c {
            Column::Fold(ps) => ps.len(),
            Column::Position(_) => 0,
        })
        .sum();
    if folded > 0 && !used.is_empty() {
        notes.push(format!(
            "{folded} of {t} positions keep nothing and are folded into the narrow … columns (hover one to read its tokens)."
        ));
    }
    Layout {
        columns,
        rows,
        logits_row,
        nodes,
        qk_arcs,
        path_links: links,
        kept,
        notes,
        names,
        labels,
    }
}

// Geometry, in pixels.
const LEFT: f64 = 92.0;
const TOP: f64 = 58.0;
const SUB_ROW: f64 = 22.0;
const LAYER_GAP: f64 = 8.0;
const FOLD_WIDTH: f64 = 18.0;
const NODE_RADIUS: f64 = 6.0;

fn head_label(h: HeadId) -> String {
    h.to_string()
}

/// A component's id as the page writes it in `data-ids`: `1.0`, `mlp2`.
pub fn component_id(u: Upstream) -> String {
    match u {
        Upstream::Head(h) => h.to_string(),
        Upstream::Mlp(l) => format!("mlp{l}"),
        Upstream::Embed => "embed".to_string(),
    }
}

/// The inline SVG of a laid-out circuit.
pub fn draw(input: &GraphInput, layout: &Layout) -> String {
    let ex = input.example;
    // Column geometry.
    // A position no label names is written as an offset from the last named one before it
    // (`S1+2`), or by index before the first.
    let column_name = |p: usize| -> String {
        if let Some(names) = layout.names.get(&p) {
            return names.join("·");
        }
        match layout.labels.range(..p).next_back() {
            Some((&q, names)) => format!("{}+{}", names[0], p - q),
            None => format!("#{p}"),
        }
    };
    let token = |p: usize| token_label(input.tokens.get(p).map(String::as_str).unwrap_or(""));
    let mut xs: Vec<(f64, f64)> = Vec::new(); // (left, width) per column
    let mut x = LEFT;
    for col in &layout.columns {
        let w = match col {
            Column::Position(p) => {
                let name = truncate(&column_name(*p), 14);
                (text_width(&name, 10.0).max(text_width(&token(*p), 10.0)) + 10.0).clamp(34.0, 96.0)
            }
            Column::Fold(_) => FOLD_WIDTH,
        };
        xs.push((x, w));
        x += w;
    }
    let width = x + 16.0;
    let centre_of = |p: usize| -> f64 {
        for (col, (left, w)) in layout.columns.iter().zip(&xs) {
            match col {
                Column::Position(q) if *q == p => return left + w / 2.0,
                Column::Fold(ps) if ps.contains(&p) => return left + w / 2.0,
                _ => {}
            }
        }
        LEFT
    };

    // Row geometry.
    let mut row_y: Vec<(Row, f64)> = Vec::new();
    let mut y = TOP;
    let mut bands: Vec<(usize, f64, f64)> = Vec::new();
    for (layer, rows) in &layout.rows {
        let top = y;
        for r in rows {
            row_y.push((r.clone(), y + SUB_ROW / 2.0));
            y += SUB_ROW;
        }
        bands.push((*layer, top, y));
        y += LAYER_GAP;
    }
    if layout.logits_row {
        row_y.push((Row::Logits, y + SUB_ROW / 2.0));
        y += SUB_ROW;
    }
    let height = y + 12.0;
    let y_of = |r: &Row| {
        row_y
            .iter()
            .find(|(q, _)| q == r)
            .map(|(_, y)| *y)
            .unwrap_or(TOP)
    };
    let head_row = |h: HeadId| {
        if row_y.iter().any(|(r, _)| *r == Row::Head(h)) {
            Row::Head(h)
        } else {
            Row::Group(h.layer)
        }
    };
    let row_of = |u: Upstream| match u {
        Upstream::Head(h) => head_row(h),
        Upstream::Mlp(l) => Row::Mlp(l),
        Upstream::Embed => unreachable!("edges from embed are not drawn"),
    };
    let describe = |p: usize| format!("{} (token {p} {:?})", column_name(p), token(p));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" role="img" aria-label="circuit {} over positions">"#,
        number(width),
        number(height),
        number(width),
        number(height),
        escape(&input.circuit.name)
    );
    // Column heads: position names, tokens underneath.
    for (col, (left, w)) in layout.columns.iter().zip(&xs) {
        let cx = left + w / 2.0;
        match col {
            Column::Position(p) => {
                let _ = writeln!(
                    s,
                    r#"<g class="gcol" data-pos="{p}"><title>{}</title><text class="gpos" x="{}" y="16" text-anchor="middle">{}</text><text class="gtok" x="{}" y="30" text-anchor="middle">{}</text></g>"#,
                    escape(&describe(*p)),
                    number(cx),
                    escape(&truncate(&column_name(*p), 14)),
                    number(cx),
                    escape(&token(*p))
                );
                let _ = writeln!(
                    s,
                    r#"<line class="gguide" x1="{}" y1="{}" x2="{}" y2="{}"/>"#,
                    number(cx),
                    number(TOP - 6.0),
                    number(cx),
                    number(height - 10.0)
                );
            }
            Column::Fold(ps) => {
                let tokens: Vec<String> =
                    ps.iter().map(|&p| format!("{p} {:?}", token(p))).collect();
                let _ = writeln!(
                    s,
                    r#"<g class="gfold"><title>{} folded positions, nothing kept: {}</title><rect x="{}" y="4" width="{}" height="{}"/><text class="gtok" x="{}" y="30" text-anchor="middle">…</text></g>"#,
                    ps.len(),
                    escape(&tokens.join(", ")),
                    number(left + 2.0),
                    number(w - 4.0),
                    number(height - 14.0),
                    number(cx)
                );
            }
        }
    }
    // Layer bands and row labels.
    for (layer, top, bottom) in &bands {
        let _ = writeln!(
            s,
            r#"<rect class="gband" x="4" y="{}" width="{}" height="{}"/><text class="glayer" x="8" y="{}">L{layer}</text>"#,
            number(top - 2.0),
            number(width - 8.0),
            number(bottom - top + 4.0),
            number(top + 12.0)
        );
    }
    for (row, y) in &row_y {
        let label = match row {
            Row::Head(h) => head_label(*h),
            Row::Group(l) => format!(
                "{l}.* ({})",
                layout
                    .nodes
                    .iter()
                    .filter(|n| n.row == *row)
                    .flat_map(|n| n.members.iter().copied())
                    .collect::<BTreeSet<_>>()
                    .len()
            ),
            Row::Mlp(l) => format!("mlp {l}"),
            Row::Logits => "logits".to_string(),
        };
        let faint = match row {
            Row::Head(h) => !layout.kept.iter().any(|(u, _)| *u == Upstream::Head(*h)),
            Row::Mlp(l) => !layout.kept.iter().any(|(u, _)| *u == Upstream::Mlp(*l)),
            _ => false,
        };
        let _ = writeln!(
            s,
            r#"<text class="grow{}" x="{}" y="{}" text-anchor="end">{}</text>"#,
            if faint { " ablated" } else { "" },
            number(LEFT - 8.0),
            number(y + 4.0),
            escape(&label)
        );
    }
    // Faint dots: a head or MLP row at every drawn position where it is ablated.
    for (row, y) in &row_y {
        let u = match row {
            Row::Head(h) => Upstream::Head(*h),
            Row::Mlp(l) if input.scope == Scope::HeadsAndMlps => Upstream::Mlp(*l),
            _ => continue,
        };
        // One path of round dots per row keeps a large model's page small.
        let ablated: Vec<usize> = (layout.columns.iter())
            .filter_map(|col| match col {
                Column::Position(p) if !layout.kept.contains(&(u, *p)) => Some(*p),
                _ => None,
            })
            .collect();
        if ablated.is_empty() {
            continue;
        }
        let d: String = ablated
            .iter()
            .map(|&p| format!("M {} {} h 0", number(centre_of(p)), number(*y)))
            .collect::<Vec<_>>()
            .join(" ");
        let at: Vec<String> = ablated.iter().map(|&p| column_name(p)).collect();
        let _ = writeln!(
            s,
            r#"<path class="gablated" d="{d}"><title>{} ablated at {}</title></path>"#,
            escape(&u.to_string()),
            escape(&at.join(", "))
        );
    }
    // QK arcs above their row, from key to query.
    for arc in &layout.qk_arcs {
        let y = y_of(&arc.row);
        let (x1, x2) = (centre_of(arc.key), centre_of(arc.query));
        let d = if arc.key == arc.query {
            format!(
                "M {} {} c -7 -14 7 -14 0 0",
                number(x1),
                number(y - NODE_RADIUS)
            )
        } else {
            let lift = ((x2 - x1).abs() * 0.18).clamp(8.0, SUB_ROW * 0.9);
            format!(
                "M {} {} Q {} {} {} {}",
                number(x1),
                number(y),
                number((x1 + x2) / 2.0),
                number(y - 2.0 * lift),
                number(x2),
                number(y)
            )
        };
        let heads: Vec<String> = arc.heads.iter().map(|h| h.to_string()).collect();
        let _ = writeln!(
            s,
            r#"<path class="ge qk" data-ids="{}" data-key="{}" data-query="{}" d="{d}"><title>QK edge {}: key {} → query {}</title></path>"#,
            heads.join(" "),
            arc.key,
            arc.query,
            escape(&heads.join(", ")),
            escape(&describe(arc.key)),
            escape(&describe(arc.query))
        );
        let _ = writeln!(
            s,
            r#"<circle class="gkey" cx="{}" cy="{}" r="2"/>"#,
            number(x1),
            number(y)
        );
    }
    // Path edges: from the upstream row to the downstream row in the same column, bowed right.
    for link in &layout.path_links {
        let x0 = centre_of(link.position);
        let y1 = y_of(&row_of(link.from));
        let y2 = match link.to {
            Downstream::Head(h, _) => y_of(&head_row(h)),
            Downstream::Mlp(l) => y_of(&Row::Mlp(l)),
            Downstream::Logits => y_of(&Row::Logits),
        };
        let bow = ((y2 - y1).abs() * 0.25).clamp(6.0, 16.0);
        let _ = writeln!(
            s,
            r#"<path class="ge path" data-from="{}" data-to="{}" data-pos="{}" d="M {} {} C {} {} {} {} {} {}"><title>path edge {} → {} at {}</title></path>"#,
            escape(&link.from.to_string()),
            escape(&link.to.to_string()),
            link.position,
            number(x0),
            number(y1),
            number(x0 + bow),
            number(y1 + (y2 - y1) * 0.3),
            number(x0 + bow),
            number(y1 + (y2 - y1) * 0.7),
            number(x0),
            number(y2),
            escape(&link.from.to_string()),
            escape(&link.to.to_string()),
            escape(&describe(link.position))
        );
    }
    // Kept nodes on top.
    for node in &layout.nodes {
        let (cx, cy) = (centre_of(node.position), y_of(&node.row));
        let ids: Vec<String> = node.members.iter().map(|&u| component_id(u)).collect();
        let names: Vec<String> = node.members.iter().map(|&u| u.to_string()).collect();
        let score: Option<f64> = input.scores.and_then(|sc| {
            node.members
                .iter()
                .filter_map(|&u| sc.get(&(u, node.position)))
                .copied()
                .reduce(f64::max)
        });
        let mark = input.marks.and_then(|m| {
            node.members
                .iter()
                .filter_map(|&u| m.get(&(u, node.position)))
                .copied()
                .next()
        });
        let kind = match node.row {
            Row::Mlp(_) => "mlp",
            Row::Group(_) => "group",
            _ => "head",
        };
        let mut title = format!(
            "{} kept at {}",
            if names.len() > 1 {
                format!("heads {}", names.join(", "))
            } else if kind == "mlp" {
                names[0].clone()
            } else {
                format!("head {}", names[0])
            },
            describe(node.position)
        );
        if let Some(v) = score {
            let _ = write!(title, "; score {}", crate::report::num(v));
        }
        if let Some(m) = mark {
            let _ = write!(title, "; {}", m.class());
        }
        // A group's node is larger, to hold its head count.
        let base = if node.members.len() > 1 {
            NODE_RADIUS + 2.0
        } else {
            NODE_RADIUS
        };
        let r = match score {
            Some(v) => base * (0.6 + 0.8 * v.abs().min(1.0)),
            None => base,
        };
        let class = format!(
            "gn {kind}{}",
            mark.map(|m| format!(" {}", m.class())).unwrap_or_default()
        );
        let shape = if kind == "mlp" {
            format!(
                r#"<rect x="{}" y="{}" width="{}" height="{}" rx="2"/>"#,
                number(cx - r),
                number(cy - r),
                number(2.0 * r),
                number(2.0 * r)
            )
        } else {
            format!(
                r#"<circle cx="{}" cy="{}" r="{}"/>"#,
                number(cx),
                number(cy),
                number(r)
            )
        };
        let count = if node.members.len() > 1 {
            format!(
                r#"<text class="gcount" x="{}" y="{}" text-anchor="middle">{}</text>"#,
                number(cx),
                number(cy + 3.0),
                node.members.len()
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            r#"<g class="{class}" data-ids="{}" data-pos="{}"><title>{}</title>{shape}{count}</g>"#,
            ids.join(" "),
            node.position,
            escape(&title)
        );
    }
    if layout.logits_row {
        let p = ex.end();
        let _ = writeln!(
            s,
            r#"<g class="glogits"><title>logits at {}</title><rect x="{}" y="{}" width="16" height="12" rx="2"/></g>"#,
            escape(&describe(p)),
            number(centre_of(p) - 8.0),
            number(y_of(&Row::Logits) - 6.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The graph as a standalone SVG document (its classes inlined, on white), for `show --png`.
pub fn standalone(input: &GraphInput, layout: &Layout) -> String {
    let svg = draw(input, layout);
    let open_end = svg.find('>').expect("draw writes an svg element") + 1;
    format!(
        "{}\n<style>\n{}</style>\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>{}",
        &svg[..open_end],
        super::GRAPH_STYLE,
        &svg[open_end..]
    )
}
