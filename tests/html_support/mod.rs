//! Headless Chromium for the HTML report's tests: find it, load a page, dump its DOM after the
//! scripts ran, take a screenshot. Without Chromium the tests skip loudly, unless `CI` is set:
//! there they must run (`.ci/run` installs Debian's chromium).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../system_support/mod.rs"]
mod system_support;
use system_support::installed_program;

/// The Chromium binary, or `None` (with a loud message) when it is absent outside CI.
pub fn chromium() -> Option<PathBuf> {
    installed_program(
        &["chromium", "chromium-browser", "google-chrome"],
        "apt-get install chromium",
        "the HTML page's rendering in a browser",
    )
}

fn base_command(chromium: &Path, profile: &Path) -> Command {
    let mut command = Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command
}

fn url(page: &Path, fragment: &str) -> String {
    let absolute = page.canonicalize().expect("the page exists");
    format!("file://{}{fragment}", absolute.display())
}

/// The DOM of `page` (with `fragment`, e.g. `#prompt=3`) after its scripts ran.
pub fn dump_dom(chromium: &Path, page: &Path, fragment: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = base_command(chromium, profile.path())
        .arg("--dump-dom")
        .arg(url(page, fragment))
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// A PNG screenshot of `page` in a `width` × `height` window.
pub fn screenshot(chromium: &Path, page: &Path, width: u32, height: u32) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let png = profile.path().join("shot.png");
    let output = base_command(chromium, profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(url(page, ""))
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read(&png).expect("chromium wrote the screenshot")
}

/// Every start tag of `dom` whose `class` attribute starts with `class_prefix`, as its attributes.
pub fn elements(dom: &str, tag: &str, class_prefix: &str) -> Vec<Vec<(String, String)>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let end = after.find('>').expect("a start tag ends");
        let attrs = attributes(&after[..end]);
        if attrs
            .iter()
            .any(|(k, v)| k == "class" && v.starts_with(class_prefix))
        {
            out.push(attrs);
        }
        rest = &after[end..];
    }
    out
}

/// `name="value"` pairs of a start tag's inside (Chromium always double-quotes).
pub fn attributes(inside: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = inside;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().trim_end_matches('/').to_string();
        let value_start = eq + 2;
        let value_end = rest[value_start..].find('"').expect("a value ends") + value_start;
        out.push((
            name.rsplit(' ').next().unwrap_or_default().to_string(),
            rest[value_start..value_end].to_string(),
        ));
        rest = &rest[value_end + 1..];
    }
    out
}

/// An attribute's value.
pub fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `<html>` element's attributes.
pub fn root(dom: &str) -> Vec<(String, String)> {
    let start = dom.find("<html").expect("an html element");
    let end = dom[start..].find('>').unwrap() + start;
    attributes(&dom[start + 5..end])
}

/// The part of `dom` from the start tag holding `marker` to the next `</{tag}>`.
pub fn section<'a>(dom: &'a str, marker: &str, tag: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} is in the DOM"));
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .map(|e| e + start)
        .unwrap_or(dom.len());
    &dom[start..end]
}
