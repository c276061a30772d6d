//! The steps on machined's local API: wait for it, bootstrap etcd once, obtain the admin
//! kubeconfig. Skipped without a `talos` section (the cluster then comes from a kubeconfig).

use std::time::Duration;

use tracing::info;

use super::{ClusterAccess, Context, Deadline, Outcome, Settings, Step, StepFailure, StepId};
use crate::talos::{BootstrapOutcome, NodeClient};

/// Why the Talos steps do not run.
fn not_talos(settings: &Settings) -> Option<String> {
    match settings.cluster {
        ClusterAccess::Talos { .. } => None,
        ClusterAccess::Kubeconfig { .. } => {
            Some("no `talos` section: the cluster comes from a kubeconfig".into())
        }
    }
}

impl Context {
    /// The client of machined's socket, connected on first use.
    async fn talos(&mut self) -> Result<&mut NodeClient, StepFailure> {
        let ClusterAccess::Talos { socket, .. } = &self.settings.cluster else {
            return Err(StepFailure::config("the Talos API is not configured"));
        };
        if self.talos.is_none() {
            self.talos = Some(NodeClient::connect(socket).await?);
        }
        self.talos
            .as_mut()
            .ok_or_else(|| StepFailure::transient("Talos client unavailable"))
    }
}

/// `talos-api`: wait until machined answers `Version` on its socket.
pub(super) enum TalosApi {}

impl Step for TalosApi {
    const NAME: &'static str = "talos-api";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(600));

    fn skip(settings: &Settings) -> Option<String> {
        not_talos(settings)
    }

    fn action(settings: &Settings) -> String {
        match &settings.cluster {
            ClusterAccess::Talos { socket, .. } => {
                format!("wait for machined on {}", socket.display())
            }
            ClusterAccess::Kubeconfig { .. } => "wait for machined".into(),
        }
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let client = ctx.talos().await?;
        match client.version().await {
            Ok(tag) => Ok(Outcome::done(format!("machined answers (Talos {tag})"))),
            Err(e) => {
                ctx.talos = None;
                Err(e.into())
            }
        }
    }
}

/// `etcd`: `Bootstrap` once per cluster (`AlreadyExists` is done). Durable: its completion is
/// recorded in the status file on `/var`, the partition that holds etcd's data.
pub(super) enum Etcd {}

impl Step for Etcd {
    const NAME: &'static str = "etcd";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(600));
    const DURABLE: bool = true;

    fn skip(settings: &Settings) -> Option<String> {
        match settings.cluster {
            ClusterAccess::Talos {
                bootstrap_etcd: false,
                ..
            } => Some("talos.bootstrapEtcd is false".into()),
            _ => not_talos(settings),
        }
    }

    fn action(_: &Settings) -> String {
        "bootstrap etcd through the local Talos API (once per cluster)".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let client = ctx.talos().await?;
        match client.bootstrap().await? {
            BootstrapOutcome::Bootstrapped => {
                info!("etcd bootstrapped");
                Ok(Outcome::done("etcd bootstrapped"))
            }
            BootstrapOutcome::AlreadyBootstrapped => {
                Ok(Outcome::done("etcd was already bootstrapped"))
            }
        }
    }
}

/// `kubeconfig`: `Kubeconfig` (a gzip tar holding `kubeconfig`), kept in memory only. Part of
/// reaching the Kubernetes API: it runs under `kube-api`'s deadline.
pub(super) enum Kubeconfig {}

impl Step for Kubeconfig {
    const NAME: &'static str = "kubeconfig";
    const DEADLINE: Deadline = Deadline::SameAs(StepId::KubeApi);

    fn skip(settings: &Settings) -> Option<String> {
        not_talos(settings)
    }

    fn action(_: &Settings) -> String {
        "obtain the admin kubeconfig from machined (kept in memory)".into()
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let client = ctx.talos().await?;
        let kubeconfig = client.kubeconfig().await?;
        let size = kubeconfig.as_str().len();
        ctx.kubeconfig = Some(kubeconfig);
        ctx.cluster = None;
        Ok(Outcome::done(format!(
            "admin kubeconfig obtained ({size} bytes, kept in memory)"
        )))
    }
}
