//! `bootstrap-agent bundle ...`: keeping the pinned bundle current (operator and build time).

use std::path::PathBuf;

use clap::Subcommand;

use crate::bundle::{self, Bundle, BundleLock, FetchOptions};
use crate::error::Classify;

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

/// Runs a `bundle` subcommand; returns the exit code.
pub fn main(command: &BundleCommand) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return crate::exit::TRANSIENT;
        }
    };
    let result: Result<(), bundle::BundleError> = runtime.block_on(async {
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
    });
    match result {
        Ok(()) => crate::exit::SUCCESS,
        Err(e) => {
            eprintln!("bootstrap-agent bundle: {e}");
            if e.is_transient() {
                crate::exit::TRANSIENT
            } else {
                crate::exit::CONFIG
            }
        }
    }
}
