//! Shared by the picture tests: a tiny XML reader, enough to check that the SVG documents this
//! crate writes are well-formed and to read their numbers back.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// One start or empty-element tag: its name and attributes.
#[derive(Debug)]
pub struct Tag {
    pub name: String,
    pub attrs: BTreeMap<String, String>,
}

impl Tag {
    pub fn num(&self, attr: &str) -> f64 {
        self.attrs[attr]
            .parse()
            .unwrap_or_else(|_| panic!("{attr} of {self:?}"))
    }
}

/// Checks that `text` is well-formed (one root, balanced tags, quoted attributes, known
/// entities, no raw `<` or `&` in text) and returns every start tag in document order, with the
/// text content of each `text` element appended as a pseudo-attribute `#text` (unescaped).
pub fn parse_xml(text: &str) -> Vec<Tag> {
    let mut tags = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = text;
    let mut pending_text: Option<usize> = None;
    let mut content = String::new();
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open]);
        content.push_str(&unescape(&rest[..open]));
        rest = &rest[open..];
        if let Some(body) = rest.strip_prefix("<?") {
            let end = body.find("?>").expect("closed declaration");
            rest = &body[end + 2..];
        } else if let Some(body) = rest.strip_prefix("<![CDATA[") {
            let end = body.find("]]>").expect("closed CDATA");
            rest = &body[end + 3..];
        } else if let Some(body) = rest.strip_prefix("</") {
            let end = body.find('>').expect("closed end tag");
            let name = body[..end].trim();
            assert_eq!(stack.pop().as_deref(), Some(name), "unbalanced </{name}>");
            if name == "text" {
                let i = pending_text.take().expect("a text element was open");
                let tag: &mut Tag = &mut tags[i];
                tag.attrs
                    .insert("#text".into(), std::mem::take(&mut content));
            }
            rest = &body[end + 1..];
        } else {
            let body = &rest[1..];
            let end = body.find('>').expect("closed tag");
            let (inner, empty) = match body[..end].strip_suffix('/') {
                Some(inner) => (inner, true),
                None => (&body[..end], false),
            };
            let tag = parse_tag(inner);
            if stack.is_empty() {
                roots += 1;
            }
            if !empty {
                stack.push(tag.name.clone());
                if tag.name == "text" {
                    pending_text = Some(tags.len());
                    content.clear();
                }
            }
            tags.push(tag);
            rest = &body[end + 1..];
        }
    }
    check_text(rest);
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert_eq!(roots, 1, "one root element");
    tags
}

fn parse_tag(inner: &str) -> Tag {
    let inner = inner.trim();
    let name_end = inner.find(char::is_whitespace).unwrap_or(inner.len());
    let name = inner[..name_end].to_string();
    assert!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "bad tag name {name:?}"
    );
    let mut attrs = BTreeMap::new();
    let mut rest = inner[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=').expect("attribute = value");
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        assert!(after.starts_with('"'), "{key} is not double-quoted");
        let close = after[1..].find('"').expect("closed quote") + 1;
        let value = &after[1..close];
        check_text(value);
        assert!(
            attrs.insert(key.clone(), unescape(value)).is_none(),
            "duplicate {key}"
        );
        rest = after[close + 1..].trim_start();
    }
    Tag { name, attrs }
}

/// Text outside tags may hold no `<`, and every `&` starts a known entity.
fn check_text(text: &str) {
    assert!(!text.contains('<'), "raw < in {text:?}");
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity),
            "bad entity {entity:?} in {text:?}"
        );
    }
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

pub fn with_class<'a>(tags: &'a [Tag], name: &str, class: &str) -> Vec<&'a Tag> {
    tags.iter()
        .filter(|t| {
            t.name == name
                && t.attrs
                    .get("class")
                    .is_some_and(|c| c.split(' ').any(|part| part == class))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_xml;

    #[test]
    fn the_xml_check_rejects_broken_documents() {
        // The checker above must be able to fail, or the well-formedness tests prove nothing.
        for bad in [
            r#"<svg><text x="1">a<b</text></svg>"#,
            r#"<svg><text x="1">a & b</text></svg>"#,
            r#"<svg><g></svg>"#,
            r#"<svg x=1></svg>"#,
            r#"<svg></svg><svg></svg>"#,
        ] {
            let result = std::panic::catch_unwind(|| parse_xml(bad));
            assert!(result.is_err(), "accepted {bad}");
        }
    }
}
