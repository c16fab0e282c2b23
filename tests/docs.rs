//! The README and `docs/` as a reader follows them: every relative link
//! names a file that exists and, after `#`, a heading of that file; the README
//! stays short enough to find one's way in.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README and every Markdown file under `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs folder")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The targets of the Markdown links `[text](target)` in `text`, outside
/// code blocks.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, spaces to dashes, anything
/// else but letters, digits, `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            !fenced
        })
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| anchor(heading.trim_start_matches('#')))
        .collect()
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for document in documents() {
        let text = std::fs::read_to_string(&document).unwrap();
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = match file {
                "" => document.clone(),
                file => document.parent().unwrap().join(file),
            };
            // Read as bytes: a link may name an image.
            let Ok(target_bytes) = std::fs::read(&target) else {
                if !target.is_dir() {
                    broken.push(format!("{}: {link} (no such file)", document.display()));
                }
                continue;
            };
            let target_text = String::from_utf8_lossy(&target_bytes);
            if !fragment.is_empty()
                && target.extension().is_some_and(|ext| ext == "md")
                && !anchors(&target_text).iter().any(|a| a == fragment)
            {
                broken.push(format!("{}: {link} (no such heading)", document.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_stays_under_900_lines() {
    let lines = std::fs::read_to_string(root().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines < 900,
        "README.md has {lines} lines: move detail to docs/"
    );
}

#[test]
fn the_anchor_of_a_heading_is_githubs() {
    assert_eq!(
        anchor("When to use it, and when not"),
        "when-to-use-it-and-when-not"
    );
    assert_eq!(
        anchor("Admin endpoints (`admin_addr`, default `127.0.0.1:9090`)"),
        "admin-endpoints-admin_addr-default-1270019090"
    );
}
