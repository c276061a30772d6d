//! `image-factory`: schematic IDs, the Image Factory API and the imager invocation.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use image_factory::client::{FactoryClient, PUBLIC_FACTORY};
use image_factory::imager::{self, ImagerInputs};
use image_factory::profile::{self, DEFAULT_TALOS_VERSION, Kind, ProfileInputs};
use image_factory::schematic::Schematic;
use image_factory::{GUEST_AGENT, GUEST_AGENT_PLACEHOLDER, PROFILE_HEADER};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the schematic ID of a schematic file (as the Image Factory computes it).
    SchematicId {
        file: PathBuf,
        /// Also print the canonical YAML that is hashed.
        #[arg(long)]
        show: bool,
    },
    /// Register a schematic with an Image Factory and print its ID and image URLs.
    CreateSchematic {
        file: PathBuf,
        #[arg(long, default_value = PUBLIC_FACTORY)]
        factory: String,
        #[arg(long, default_value = DEFAULT_TALOS_VERSION)]
        talos_version: String,
    },
    /// Print an imager profile.
    Profile {
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long, default_value = DEFAULT_TALOS_VERSION)]
        talos_version: String,
        /// Pinned qemu-guest-agent image; default: a placeholder (see the committed examples).
        #[arg(long)]
        guest_agent_ref: Option<String>,
        /// Machine configuration to embed (holds cluster secrets: keep the image private).
        #[arg(long)]
        embedded_config: Option<PathBuf>,
    },
    /// Build the SecureBoot ISO or installer with imager (runs it when docker/podman works,
    /// prints the command otherwise).
    Imager {
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long, default_value = DEFAULT_TALOS_VERSION)]
        talos_version: String,
        /// SecureBoot keys (`talosctl gen secureboot ...` output directory).
        #[arg(long)]
        keys: PathBuf,
        /// Our extension's OCI layout directory.
        #[arg(long)]
        extension: PathBuf,
        #[arg(long, default_value = "_out")]
        out: PathBuf,
        /// Pinned qemu-guest-agent image; looked up from --factory when absent.
        #[arg(long)]
        guest_agent_ref: Option<String>,
        #[arg(long, default_value = PUBLIC_FACTORY)]
        factory: String,
        /// Machine configuration to embed (holds cluster secrets: keep the image private).
        #[arg(long)]
        embedded_config: Option<PathBuf>,
        /// Only print the command, even when a container engine works.
        #[arg(long)]
        print: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(Cli::parse().command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

fn read(path: &Path) -> Result<String, BoxError> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

fn embedded(path: &Option<PathBuf>) -> Result<Option<String>, BoxError> {
    let Some(path) = path else { return Ok(None) };
    tracing::warn!(
        "embedding {} in the image: the image now holds cluster secrets; keep it private (never publish it to a registry or share the ISO)",
        path.display()
    );
    Ok(Some(read(path)?))
}

async fn run(cmd: Cmd) -> Result<(), BoxError> {
    match cmd {
        Cmd::SchematicId { file, show } => {
            let s = Schematic::parse(&read(&file)?)?;
            if show {
                print!("{}", s.canonical_yaml());
            }
            println!("{}", s.id());
        }
        Cmd::CreateSchematic {
            file,
            factory,
            talos_version,
        } => {
            let s = Schematic::parse(&read(&file)?)?;
            let client = FactoryClient::new(&factory)?;
            let id = client.create_schematic(&s).await?;
            println!("id:        {id}");
            println!(
                "iso:       {}",
                client.image_url(&id, &talos_version, "metal-amd64-secureboot.iso")
            );
            println!(
                "installer: {}",
                client.secureboot_installer(&id, &talos_version)
            );
        }
        Cmd::Profile {
            kind,
            talos_version,
            guest_agent_ref,
            embedded_config,
        } => {
            let inputs = ProfileInputs {
                kind,
                talos_version,
                guest_agent_ref: guest_agent_ref.unwrap_or_else(|| GUEST_AGENT_PLACEHOLDER.into()),
                embedded_config: embedded(&embedded_config)?,
            };
            print!("{PROFILE_HEADER}{}", profile::render(&inputs)?);
        }
        Cmd::Imager {
            kind,
            talos_version,
            keys,
            extension,
            out,
            guest_agent_ref,
            factory,
            embedded_config,
            print,
        } => {
            let guest_agent_ref = match guest_agent_ref {
                Some(r) => r,
                None => FactoryClient::new(&factory)?
                    .official_extension(&talos_version, GUEST_AGENT)
                    .await
                    .map_err(|e| format!("{e}; or pass --guest-agent-ref IMAGE@sha256:..."))?
                    .pinned(),
            };
            let inputs = ImagerInputs {
                profile: ProfileInputs {
                    kind,
                    talos_version,
                    guest_agent_ref,
                    embedded_config: embedded(&embedded_config)?,
                },
                keys,
                extension,
                out: out.clone(),
            };
            let invocation = imager::plan(&inputs)?;
            std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            match imager::working_engine().filter(|_| !print) {
                Some(engine) => {
                    tracing::info!(%engine, kind = kind.name(), "running imager");
                    invocation.run(&engine)?;
                    println!("built {} into {}", kind.name(), out.display());
                }
                None => {
                    let profile_path = out.join(format!("{}.profile.yaml", kind.name()));
                    invocation.write_profile(&profile_path)?;
                    if !print {
                        eprintln!(
                            "no working container engine (docker/podman info failed); run this where one exists:"
                        );
                    }
                    println!("{}", invocation.shell_command("docker", &profile_path));
                }
            }
        }
    }
    Ok(())
}
