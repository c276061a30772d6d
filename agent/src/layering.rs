//! The modules of the crate form layers: no dependency cycle between top-level modules, and
//! nothing but `main.rs` uses `cli`. Read from the sources (`crate::` paths, and `super::` in
//! top-level files), leaving out test code and comments; a cycle fails with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every top-level module and the top-level modules its non-test code uses.
fn graph(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let file = parts.last().unwrap().as_str();
            if !file.ends_with(".rs")
                || matches!(file, "lib.rs" | "main.rs" | "layering.rs" | "tests.rs")
            {
                continue;
            }
            let top = parts[0].trim_end_matches(".rs").to_string();
            let code = without_tests_and_comments(&std::fs::read_to_string(&path).unwrap());
            let mut uses = paths_after(&code, "crate::");
            if parts.len() == 1 {
                // In a top-level file, `super` is the crate root.
                uses.extend(paths_after(&code, "super::"));
            }
            uses.remove(&top);
            graph.entry(top).or_default().extend(uses);
        }
    }
    graph
}

/// The code before the file's `#[cfg(test)] mod tests`, without `//` comments.
fn without_tests_and_comments(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The first segments of the paths that follow `prefix` (`crate::a::b`, `crate::{a, b::c}`).
fn paths_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|s| !s.is_empty() && s != "self");
    found
}

/// A dependency cycle, as the modules along it, if there is one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            format!("  {m} -> {}", uses.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn modules_form_layers_without_cycles() {
    let graph = graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 10, "{}", render(&graph));
    if let Some(cycle) = cycle(&graph) {
        panic!(
            "dependency cycle between modules: {}\n{}",
            cycle.join(" -> "),
            render(&graph)
        );
    }
    let users: Vec<&String> = graph
        .iter()
        .filter(|(_, uses)| uses.contains("cli"))
        .map(|(m, _)| m)
        .collect();
    assert!(
        users.is_empty(),
        "only main.rs may use cli; used by {users:?}"
    );
}

#[test]
fn the_checker_sees_grouped_and_super_paths_and_finds_cycles() {
    let uses = paths_after(
        "use crate::{a::B, c, d::{e, f}};\nlet x = crate::g::h();\nnotcrate::i",
        "crate::",
    );
    assert_eq!(uses, ["a", "c", "d", "g"].map(String::from).into());
    let code = without_tests_and_comments(
        "use crate::a; // crate::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n",
    );
    assert_eq!(paths_after(&code, "crate::"), ["a".to_string()].into());
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&g),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
