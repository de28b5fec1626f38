//! The library's top-level modules depend on each other one way: a module that names
//! `crate::x` depends on `x`, and no chain of such dependencies may come back to where it
//! started (docs/architecture.md, "Module layers"). This fails on the first circle, naming it.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files name as `crate::x`.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        // A `x_tests.rs` next to `x.rs` would be a `#[path]` child of `x`.
        let module = module
            .strip_suffix("_tests")
            .or_else(|| module.strip_suffix("_proptest"))
            .unwrap_or(&module)
            .to_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = deps.entry(module.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let is_module = src.join(format!("{name}.rs")).exists() || src.join(&name).is_dir();
            if !name.is_empty() && name != module && is_module {
                entry.insert(name);
            }
        }
    }
    deps
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A circle reachable from the last module of `path`, if any (depth-first; `done` holds the
/// modules already known to lead to none).
fn circle(
    deps: &BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    let here = path.last().unwrap().clone();
    for next in deps.get(&here).into_iter().flatten() {
        if let Some(at) = path.iter().position(|m| m == next) {
            let mut found = path[at..].to_vec();
            found.push(next.clone());
            return Some(found);
        }
        if done.contains(next) {
            continue;
        }
        path.push(next.clone());
        if let Some(found) = circle(deps, path, done) {
            return Some(found);
        }
        path.pop();
    }
    done.insert(here);
    None
}

#[test]
fn modules_depend_on_each_other_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let deps = dependencies(&src);
    assert!(
        deps.contains_key("hub") && deps["hub"].contains("handle"),
        "{deps:?}"
    );
    let mut done = BTreeSet::new();
    for module in deps.keys() {
        if done.contains(module) {
            continue;
        }
        let mut path = vec![module.clone()];
        if let Some(found) = circle(&deps, &mut path, &mut done) {
            panic!(
                "import circle: {} (docs/architecture.md, \"Module layers\")",
                found.join(" -> ")
            );
        }
    }
}
