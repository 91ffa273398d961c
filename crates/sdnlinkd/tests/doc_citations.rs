//! Comments cite only files that are in the repository: every `docs/<name>.md` named in the
//! sources exists, and no comment names a design or kernel-facts file outside `docs/`.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p
            .extension()
            .is_some_and(|x| x == "rs" || x == "sh" || x == "toml")
        {
            out.push(p);
        }
    }
}

/// The `docs/….md` paths named in `text`.
fn cited_docs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("docs/") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches('.');
        if path.ends_with(".md") {
            out.push(path.to_string());
        }
        rest = &tail[5..];
    }
    out
}

#[test]
fn cited_docs_exist_and_no_comment_cites_a_file_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.as_path();
    let mut files = Vec::new();
    for d in ["crates", "packaging", ".ci"] {
        sources(&root.join(d), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut cited = 0;
    let mut bad = Vec::new();
    for f in &files {
        if f.ends_with("doc_citations.rs") {
            continue;
        }
        let text = fs::read_to_string(f).expect("sources are UTF-8");
        for doc in cited_docs(&text) {
            // kubernetes/dns's own spec, cited by repository and path, is not ours.
            if doc == "docs/specification.md" {
                continue;
            }
            cited += 1;
            if !root.join(&doc).is_file() {
                bad.push(format!(
                    "{}: cites {doc}, which does not exist",
                    f.display()
                ));
            }
        }
        for (n, line) in text.lines().enumerate() {
            for name in ["design.md", "kernel-facts.md"] {
                for (i, _) in line.match_indices(name) {
                    if !line[..i].ends_with("docs/") {
                        bad.push(format!("{}:{}: {name} outside docs/", f.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(cited >= 10, "only {cited} citations of docs/ found");
}

#[test]
fn the_scanner_finds_a_citation_and_ignores_other_words() {
    assert_eq!(
        cited_docs("see docs/design.md, \"Continuity\"; docs/ alone; docs/x.txt"),
        vec!["docs/design.md"]
    );
}
