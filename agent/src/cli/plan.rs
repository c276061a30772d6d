//! `bootstrap-agent plan`: offline validation and the ordered steps and objects of a run.

use std::path::Path;

use crate::config::Config;
use crate::node::Node;
use crate::plan::Plan;

/// Validates the configuration and what it references, prints the plan; returns the exit code.
pub fn main(path: &Path) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return crate::exit::CONFIG;
        }
    };
    let mut problems: Vec<String> = config
        .check_references()
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut node = Node::new(config.clone());
    problems.extend(node.check_offline());
    let plan = Plan::new(&config, node.bundle_objects());
    print!("{plan}");
    if problems.is_empty() {
        println!("Configuration {} is valid.", path.display());
        crate::exit::SUCCESS
    } else {
        eprintln!(
            "Configuration {} has {} problem(s):",
            path.display(),
            problems.len()
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        crate::exit::CONFIG
    }
}
