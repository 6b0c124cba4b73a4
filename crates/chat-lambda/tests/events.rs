//! The sample events in `tests/fixtures` stay alive: each is used by a handler test (so none is
//! left behind when a test changes), and every one that the README's "Run a function on a
//! sample event" names exists (so the documented commands keep working). Their shape is checked
//! in `handlers.rs` (`every_fixture_is_an_event_in_api_gateways_shape`).

use std::path::{Path, PathBuf};

const FIXTURES: &str = "tests/fixtures";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, as paths relative to it (`ping.json`, `authorizer/request.json`).
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            files_under(&entry.path(), &format!("{name}/"), out);
        } else {
            out.push(name);
        }
    }
}

/// The text of every test source but this one.
fn test_sources() -> String {
    let mut sources = String::new();
    for dir in ["tests", "tests/support"] {
        for entry in std::fs::read_dir(manifest_dir().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests/events.rs") {
                sources.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    sources
}

#[test]
fn every_sample_event_is_used_by_a_test() {
    let mut events = Vec::new();
    files_under(&manifest_dir().join(FIXTURES), "", &mut events);
    assert!(events.len() >= 10, "{events:?}");
    let sources = test_sources();
    let unused: Vec<&String> = events
        .iter()
        .filter(|event| {
            !sources.contains(&format!("\"{event}\"")) && !sources.contains(&format!("/{event}\""))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "sample events no test uses (use them, or remove them and the README's mention): {unused:?}"
    );
}

#[test]
fn every_sample_event_the_readme_names_exists() {
    let root = manifest_dir().join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let prefix = "crates/chat-lambda/tests/fixtures/";
    let named: Vec<&str> = readme
        .match_indices(prefix)
        .map(|(at, _)| {
            let rest = &readme[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ')' || c == '`')
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|path| path.ends_with(".json"))
        .collect();
    assert!(
        named.len() >= 3,
        "the README names the sample events: {named:?}"
    );
    for path in named {
        assert!(
            root.join(path).is_file(),
            "README names {path}, which does not exist"
        );
    }
}
