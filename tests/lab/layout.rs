//! The house rules a newcomer relies on, checked over the source itself (issue "A house a
//! newcomer can walk"):
//!
//! - every lesson is whole: its module, its page, its example, its tests and its chapter,
//!   under one name;
//! - no module imports one that imports it back: leaves first (stats, http, ws, the codecs,
//!   classroom), then the hub and the broker, then `Lab` (the core: config, hub, broker,
//!   counters), then the lessons, each handed its own state, and at the top `server`, the
//!   only module that knows every lesson.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every lesson: a file `src/lessons/NAME.rs` or a folder `src/lessons/NAME/`.
fn lessons() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("src/lessons"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            (name != "mod").then_some(name)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_lesson_has_its_module_page_example_tests_and_chapter() {
    let book = std::fs::read_to_string(root().join("LESSONS.md")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let test_binary = std::fs::read_to_string(root().join("tests/lab/main.rs")).unwrap();
    let lessons = lessons();
    assert!(lessons.len() >= 18, "{lessons:?}");
    let mut missing = Vec::new();
    for name in &lessons {
        for part in [
            format!("html/{name}.html"),
            format!("examples/{name}.rs"),
            format!("tests/lab/{name}.rs"),
        ] {
            if !root().join(&part).is_file() {
                missing.push(part);
            }
        }
        let chapter = book
            .lines()
            .any(|l| l.starts_with("## Chapter") && l.contains(&format!("`{name}`")));
        if !chapter {
            missing.push(format!("a LESSONS.md chapter heading naming `{name}`"));
        }
        if !test_binary.contains(&format!("\nmod {name};\n")) {
            missing.push(format!("`mod {name};` in tests/lab/main.rs"));
        }
        let listed = reverse_ajax_lab::lessons::LESSONS
            .iter()
            .any(|lesson| lesson.name == name);
        // Its entry names its chapter, as the book numbers it.
        if let Some(lesson) = reverse_ajax_lab::lessons::LESSONS
            .iter()
            .find(|lesson| lesson.name == name)
        {
            let heading = format!("## Chapter {}: ", lesson.chapter);
            let numbered = book
                .lines()
                .any(|l| l.starts_with(&heading) && l.contains(&format!("`{name}`")));
            if !numbered {
                missing.push(format!(
                    "LESSONS.md's chapter {} heading naming `{name}`",
                    lesson.chapter
                ));
            }
        }
        if !listed {
            missing.push(format!("`{name}` in src/lessons/mod.rs's LESSONS"));
        }
        if !readme.contains(&format!("`/lessons/{name}`")) {
            missing.push(format!("a row for `/lessons/{name}` in README.md's table"));
        }
    }
    assert!(
        missing.is_empty(),
        "lessons that are not whole: {missing:?}"
    );
}

/// The modules that `crate::` paths (and `super::` out of a lesson) in each source file
/// name, by unit: a top-level module (`hub`), the lessons' shared module (`lessons`), or one
/// lesson with all its files (`lessons::socket_io`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let lessons: BTreeSet<String> = lessons().into_iter().collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&root().join("src")) {
        let relative = file.strip_prefix(root().join("src")).unwrap();
        let parts: Vec<&str> = relative
            .iter()
            .map(|p| p.to_str().unwrap().trim_end_matches(".rs"))
            .collect();
        let (unit, parent) = match parts.as_slice() {
            ["lib"] | ["main"] => continue,
            ["lessons", "mod"] => ("lessons".to_string(), None),
            ["lessons", lesson] => (format!("lessons::{lesson}"), Some("lessons")),
            ["lessons", lesson, "mod"] => (format!("lessons::{lesson}"), Some("lessons")),
            ["lessons", lesson, _] => (format!("lessons::{lesson}"), None),
            [module] => (module.to_string(), None),
            other => panic!("a source file outside the layout: {other:?}"),
        };
        let text = std::fs::read_to_string(&file).unwrap();
        // A file's own unit tests (`use super::*` in `mod tests`) import nothing of the house.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            named.extend(units_named(rest, &lessons));
        }
        if let Some(parent) = parent {
            if code.contains("super::") {
                named.insert(parent.to_string());
            }
        }
        if unit.starts_with("lessons::") && code.contains("super::super::") {
            named.insert("lessons".to_string());
        }
        named.remove(&unit);
        graph.entry(unit).or_default().extend(named);
    }
    graph
}

/// The units a path after `crate::` names: `hub::Hub` → hub, `lessons::sse::x` →
/// lessons::sse, `{Config, ParkingMode}` → config, `Lab` (re-exported) → lab.
fn units_named(rest: &str, lessons: &BTreeSet<String>) -> Vec<String> {
    let reexported = |name: &str| match name {
        "Config" | "ParkingMode" | "CliError" => Some("config"),
        "Lab" => Some("lab"),
        "Hub" | "Event" | "Subscription" => Some("hub"),
        "RunningLab" => Some("server"),
        _ => None,
    };
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(list) = rest.strip_prefix('{') {
        let list = &list[..list.find('}').unwrap_or(list.len())];
        return list
            .split(',')
            .flat_map(|item| units_named(item.trim(), lessons))
            .collect();
    }
    let first = word(rest);
    if let Some(unit) = reexported(&first) {
        return vec![unit.to_string()];
    }
    if first == "lessons" {
        let second = word(rest.trim_start_matches("lessons::"));
        if lessons.contains(&second) {
            return vec![format!("lessons::{second}")];
        }
        return vec!["lessons".to_string()];
    }
    if first.is_empty() || first.chars().next().is_some_and(char::is_uppercase) {
        return Vec::new();
    }
    vec![first]
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The units that sit on a circle: a strongly connected component of more than one unit
/// (Tarjan's algorithm).
fn units_on_circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Search<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut Search<'g>, unit: &'g str) {
        let n = s.index.len();
        s.index.insert(unit, n);
        s.low.insert(unit, n);
        s.stack.push(unit);
        for next in s.graph.get(unit).into_iter().flatten() {
            let next = next.as_str();
            if !s.index.contains_key(next) {
                visit(s, next);
                let low = s.low[unit].min(s.low[next]);
                s.low.insert(unit, low);
            } else if s.stack.contains(&next) {
                let low = s.low[unit].min(s.index[next]);
                s.low.insert(unit, low);
            }
        }
        if s.low[unit] == s.index[unit] {
            let mut component = BTreeSet::new();
            while let Some(top) = s.stack.pop() {
                component.insert(top.to_string());
                if top == unit {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for unit in graph.keys() {
        if !search.index.contains_key(unit.as_str()) {
            visit(&mut search, unit);
        }
    }
    search.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(
        graph["broker"].contains("hub") && !graph["hub"].contains("broker"),
        "the broker calls the hub; the hub knows no broker: {graph:?}"
    );
    // Only `server` knows every lesson, and nothing imports `server` back.
    let lessons: Vec<&String> = graph["server"]
        .iter()
        .filter(|u| u.starts_with("lessons"))
        .collect();
    assert!(!lessons.is_empty(), "{graph:?}");
    let importers: Vec<&String> = graph
        .iter()
        .filter(|(_, uses)| uses.contains("server"))
        .map(|(unit, _)| unit)
        .collect();
    assert!(importers.is_empty(), "{importers:?} import server");
    let circles = units_on_circles(&graph);
    assert!(
        circles.is_empty(),
        "modules that import one that imports them back: {circles:?}; the imports: {graph:?}"
    );
}

/// The check itself finds a circle: two units that name each other.
#[test]
fn the_circle_check_finds_a_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    let circles = units_on_circles(&graph);
    assert_eq!(circles.len(), 1);
    assert_eq!(circles[0], ["a", "b", "c"].map(String::from).into());
    let lessons: BTreeSet<String> = ["sse".to_string()].into();
    assert_eq!(
        units_named("lessons::sse::serve", &lessons),
        ["lessons::sse"]
    );
    assert_eq!(units_named("lessons::events_answer", &lessons), ["lessons"]);
    assert_eq!(units_named("{Config, Lab}", &lessons), ["config", "lab"]);
}
