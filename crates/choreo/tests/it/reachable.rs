//! Everything a public signature of the facade mentions is reachable
//! through `choreo`: a user who calls `Service::start` can name the
//! `ServiceHandle` it returns, and one who sets `Service::limits` the
//! `Limits` it takes, without depending on choreo's inner crates.
//!
//! How: rustdoc already knows. It documents each item the facade re-exports
//! on the facade's own pages, and links every type in a signature to the
//! page of the path it is reachable by — the facade's own page when the
//! facade re-exports it, the inner crate's page (`../choreo_bus/…`) when it
//! does not. So the test documents the facade (with the features that add
//! modules to it) and reads every link on its pages: a link into an inner
//! crate that the facade does not re-export whole (`choreo::kafka` is
//! `choreo_kafka`) is a type a user cannot name. A type the facade forgets
//! then fails this test, whatever item mentions it, with no list here to
//! keep up to date. (Rustdoc's JSON output would say the same more directly,
//! but it needs a nightly compiler.)

use std::collections::BTreeSet;
use std::path::Path;

use crate::cargo::{cargo, repo, target_dir};

/// The inner crates the facade re-exports whole (`pub use choreo_kafka as
/// kafka;`), read from its source: their items are reachable as
/// `choreo::kafka::…`.
fn reexported_whole() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(repo().join("crates/choreo/src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub use "))
        .filter_map(|l| l.split_once(" as "))
        .map(|(krate, _)| krate.trim().to_owned())
        .filter(|k| k.starts_with("choreo_") && !k.contains("::"))
        .collect()
}

fn html_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            html_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
}

/// The crate directory a relative link goes to (`../../choreo_bus/x.html`
/// → `choreo_bus`), if it goes up and into one.
fn linked_crate(href: &str) -> Option<&str> {
    let rest = href.trim_start_matches("../");
    if rest.len() == href.len() {
        return None;
    }
    rest.split('/').next()
}

#[test]
fn every_type_the_facades_signatures_mention_is_reachable_through_it() {
    let doc = target_dir().join("doc");
    // Rustdoc links to another crate's pages only where that crate's docs
    // are (or will be) in the same directory; documented alone, the inner
    // crates' directories must exist for their types to be linked at all.
    for krate in [
        "choreo_core",
        "choreo_bus",
        "choreo_topology",
        "choreo_trace",
    ] {
        std::fs::create_dir_all(doc.join(krate)).unwrap();
    }
    let facade = doc.join("choreo");
    let _ = std::fs::remove_dir_all(&facade);
    cargo(
        &repo(),
        &[
            "doc",
            "--quiet",
            "-p",
            "choreo",
            "--no-deps",
            "--features",
            "topology,trace,testing",
        ],
    );

    let whole = reexported_whole();
    assert!(whole.contains("choreo_trace"), "{whole:?}");
    let mut pages = Vec::new();
    html_files(&facade, &mut pages);
    let mut unreachable = BTreeSet::new();
    let mut internal = 0;
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap();
        for (i, _) in html.match_indices("href=\"") {
            let href = &html[i + 6..];
            let href = &href[..href.find('"').unwrap_or(href.len())];
            match linked_crate(href) {
                Some(k) if k.starts_with("choreo_") && !whole.contains(k) => {
                    let from = page.strip_prefix(&doc).unwrap_or(page).display();
                    let to = href.trim_start_matches("../");
                    unreachable.insert(format!("{from} links to {to}"));
                }
                Some("src") => {}
                _ if href.ends_with(".html") && !href.contains("://") => internal += 1,
                _ => {}
            }
        }
    }
    // The scan reads links: the facade's pages link to one another.
    assert!(
        pages.len() > 50 && internal > 100,
        "{} pages, {internal} links between them: did rustdoc run?",
        pages.len()
    );
    assert!(
        unreachable.is_empty(),
        "public signatures of the facade mention types that are not reachable through `choreo` \
         (re-export each in crates/choreo/src/lib.rs, in the module it belongs to):\n{}",
        unreachable.into_iter().collect::<Vec<_>>().join("\n")
    );
    let service = std::fs::read_to_string(facade.join("struct.Service.html")).unwrap();
    assert!(
        service.contains("service/struct.ServiceHandle.html"),
        "Service's page links its ServiceHandle to the facade's page"
    );
}
