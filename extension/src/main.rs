//! `bootstrap-agent-extension build|validate`: builds the Talos system extension image, or
//! checks any extension image against Talos's rules.

use std::path::PathBuf;
use std::process::ExitCode;

use bootstrap_agent_extension::image::{self, BuildInputs};
use bootstrap_agent_extension::validate::{self, Policy};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the extension image (OCI layout, OCI archive, flat tar) and validate it.
    Build {
        /// The static agent binary (x86_64-unknown-linux-musl release build).
        #[arg(long)]
        binary: PathBuf,
        /// A bundle directory (holding bundle.lock.yaml) to embed under /bundle.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Output directory.
        #[arg(long, default_value = "target/extension")]
        out: PathBuf,
        /// Version for the manifest and the image tag.
        #[arg(long, default_value = image::VERSION)]
        version: String,
    },
    /// Check an extension: OCI layout dir, OCI archive, flat extension tar or unpacked tree.
    Validate {
        path: PathBuf,
        /// Apply only Talos's own rules (any extension), not this project's stricter ones.
        #[arg(long)]
        talos_rules: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, bootstrap_agent_extension::Error> {
    match command {
        Command::Build {
            binary,
            bundle,
            out,
            version,
        } => {
            let inputs = BuildInputs {
                binary,
                bundle,
                version,
            };
            let built = image::write_outputs(&inputs, &out)?;
            let reports = validate::validate_path(&built.layout, &Policy::bootstrap_agent())?;
            if print_reports(&reports) {
                eprintln!("error: the image just built fails validation; not publishing it");
                return Ok(ExitCode::from(1));
            }
            println!("digest:   {}", built.digest);
            println!(
                "layout:   {}  (skopeo copy oci:{}:{} ..., imager ociPath)",
                built.layout.display(),
                built.layout.display(),
                built.tag
            );
            println!(
                "archive:  {}  (skopeo copy oci-archive:...)",
                built.archive.display()
            );
            println!(
                "flat tar: {}  (imager tarballPath)",
                built.flat_tar.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { path, talos_rules } => {
            let policy = if talos_rules {
                Policy::talos()
            } else {
                Policy::bootstrap_agent()
            };
            let reports = validate::validate_path(&path, &policy)?;
            if print_reports(&reports) {
                Ok(ExitCode::from(1))
            } else {
                for r in &reports {
                    println!("{}: ok", r.subject);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// Prints every finding; true when there was any.
fn print_reports(reports: &[validate::Report]) -> bool {
    let mut any = false;
    for report in reports {
        for f in &report.findings {
            any = true;
            eprintln!("{}: {f}", report.subject);
        }
    }
    any
}
