//! `bootstrap-agent bundle ...`: keeping the pinned bundle current (operator and build time).

use std::path::PathBuf;

use clap::Subcommand;

use crate::bundle::{self, Bundle, BundleLock, FetchOptions};
use crate::error::Classify;
use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Download every artifact of a lock file and write their current sha256 into it.
    Refresh {
        /// The lock file to update.
        #[arg(long, default_value = "agent/bundle/bundle.lock.yaml")]
        lock: PathBuf,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Download the pinned artifacts into a directory, for the extension builder to embed.
    Fetch {
        #[arg(long, default_value = "agent/bundle/bundle.lock.yaml")]
        lock: PathBuf,
        /// Output directory (created).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle directory offline: lock, pins, digests and documents.
    Verify {
        /// Directory holding bundle.lock.yaml and the artifacts.
        dir: PathBuf,
    },
}

/// Runs a `bundle` subcommand.
pub fn run(command: &BundleCommand) -> Exit {
    super::block_on(0, async {
        match execute(command).await {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("bootstrap-agent bundle: {e}");
                // Anything but a network failure is wrong input: the lock, a pin, a file.
                if e.is_transient() {
                    Exit::Transient
                } else {
                    Exit::Config
                }
            }
        }
    })
}

async fn execute(command: &BundleCommand) -> Result<(), bundle::BundleError> {
    match command {
        BundleCommand::Refresh { lock, dry_run } => {
            let current = BundleLock::load(lock)?;
            let (updated, changes) =
                bundle::refresh_lock(&current, &FetchOptions::default()).await?;
            for c in &changes {
                let old = if c.old_sha256.is_empty() {
                    "(unpinned)"
                } else {
                    &c.old_sha256
                };
                println!("{}: {old} -> {}", c.artifact, c.new_sha256);
                if c.old_digest != c.new_digest {
                    let old = if c.old_digest.is_empty() {
                        "(unpinned)"
                    } else {
                        &c.old_digest
                    };
                    println!("{}: manifest {old} -> {}", c.artifact, c.new_digest);
                }
            }
            if changes.is_empty() {
                println!("{}: every pin is current", lock.display());
            } else if !dry_run {
                let text = updated.to_yaml()?;
                std::fs::write(lock, text).map_err(|source| bundle::BundleError::Read {
                    path: lock.clone(),
                    source,
                })?;
                println!("{}: {} pin(s) updated", lock.display(), changes.len());
            }
            Ok(())
        }
        BundleCommand::Fetch { lock, out } => {
            let lock_doc = BundleLock::load(lock)?;
            bundle::download_to_dir(&lock_doc, &FetchOptions::default(), out).await?;
            println!(
                "{}: {} artifact(s) verified and written",
                out.display(),
                lock_doc.artifacts.len()
            );
            Ok(())
        }
        BundleCommand::Verify { dir } => {
            let b = Bundle::load_dir(dir)?;
            println!(
                "{}: {} CRD-set document(s), {} Flux document(s); every digest matches its pin",
                dir.display(),
                b.crds.len(),
                b.flux.len()
            );
            Ok(())
        }
    }
}
