//! `bootstrap-agent plan`: offline validation and the ordered steps and objects of a run.

use std::path::PathBuf;

use clap::Args;

use crate::config::Config;
use crate::exit::Exit;
use crate::plan::Plan;
use crate::preflight;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Configuration file.
    #[arg(long, default_value = super::DEFAULT_CONFIG, env = "BOOTSTRAP_AGENT_CONFIG")]
    pub config: PathBuf,
}

/// Validates the configuration and what it references, prints the plan.
pub fn run(args: &PlanArgs) -> Exit {
    let path = &args.config;
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Config;
        }
    };
    let checked = preflight::check(&config);
    let objects = checked
        .bundle
        .as_ref()
        .map(Plan::bundle_objects)
        .unwrap_or_default();
    let plan = Plan::new(&config, objects);
    let problems = checked.problems;
    print!("{plan}");
    if problems.is_empty() {
        println!("Configuration {} is valid.", path.display());
        Exit::Success
    } else {
        eprintln!(
            "Configuration {} has {} problem(s):",
            path.display(),
            problems.len()
        );
        for p in &problems {
            eprintln!("  - {p}");
        }
        Exit::Config
    }
}
