//! The real steps: what each step of the boot sequence does on a node, wiring the Talos client
//! ([`crate::talos`]), the TPM seal ([`crate::seal`]) and the Kubernetes bootstrap
//! ([`crate::kube`], [`crate::bundle`]) to the state machine in [`crate::boot`].

use tracing::info;

use crate::boot::{Outcome, StepFailure, Steps};
use crate::bundle::{Bundle, BundleLock, FetchOptions, LOCK_FILE};
use crate::config::{ClusterAccess, Config, SealedSource, SecretConfig, SecretFormat};
use crate::kube::{
    Cluster, FluxSync, ObjectReport, ObjectState, Readiness, SecretOutcome, SecretSpec,
};
use crate::plan::{PlannedObject, Stage, StepId};
use crate::seal::{self, SealError, SealedInput, TpmSettings, UnsealOutcome};
use crate::status::{ObjectRecord, TpmRecord};
use crate::talos::{BootstrapOutcome, Kubeconfig, NodeClient};
use crate::tpm::seed::SeedError;

/// The agent's view of the node during one run.
pub struct Node {
    config: Config,
    talos: Option<NodeClient>,
    kubeconfig: Option<Kubeconfig>,
    cluster: Option<Cluster>,
    bundle: Option<Result<Bundle, String>>,
    /// Set by the secrets step while sealed inputs are missing (this run).
    awaiting: Option<TpmRecord>,
}

impl Node {
    pub fn new(config: Config) -> Node {
        Node {
            config,
            talos: None,
            kubeconfig: None,
            cluster: None,
            bundle: None,
            awaiting: None,
        }
    }

    /// Loads the bundle from its directory (embedded mode) once; fetch mode loads it in the
    /// `crds` step. The error is kept as text for the plan and the status.
    fn local_bundle(&mut self) -> Option<&Result<Bundle, String>> {
        if self.config.bundle.fetch {
            return None;
        }
        if self.bundle.is_none() {
            self.bundle =
                Some(Bundle::load_dir(&self.config.bundle.dir).map_err(|e| e.to_string()));
        }
        self.bundle.as_ref()
    }

    /// The objects the bundle will apply, for the plan (empty when the bundle cannot be read
    /// offline; [`Node::check_offline`] says why).
    pub fn bundle_objects(&mut self) -> Vec<PlannedObject> {
        let Some(Ok(bundle)) = self.local_bundle() else {
            return Vec::new();
        };
        let planned = |m: &crate::bundle::Manifest, components: bool| PlannedObject {
            stage: if m.is_crd() || m.kind() == "Namespace" || !components {
                Stage::Definitions
            } else {
                Stage::Components
            },
            kind: m.kind().to_string(),
            namespace: m.namespace().map(str::to_string),
            name: m.name().to_string(),
            note: String::new(),
        };
        let mut objects: Vec<PlannedObject> =
            bundle.crds.iter().map(|m| planned(m, false)).collect();
        objects.extend(bundle.flux.iter().map(|m| planned(m, true)));
        objects
    }

    /// Problems found without touching the network or the TPM: the bundle (lock, pins and
    /// digests, documents) and the sealed inputs' format.
    pub fn check_offline(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.config.bundle.fetch {
            let lock = self.config.bundle.dir.join(LOCK_FILE);
            if let Err(e) = BundleLock::load(&lock) {
                problems.push(format!("bundle: {e}"));
            }
        } else if let Some(Err(e)) = self.local_bundle() {
            problems.push(format!("bundle: {e}"));
        }
        for (i, secret) in self.config.secrets.iter().enumerate() {
            match read_sealed(secret) {
                Ok(Some(armor)) => {
                    if let Err(e) = std::io::Read::read_to_end(
                        &mut age::armor::ArmoredReader::new(armor.as_bytes()),
                        &mut Vec::new(),
                    ) {
                        problems.push(format!(
                            "secrets[{i}] ({}): the sealed input is not valid age armor: {e}",
                            secret.label()
                        ));
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("secrets[{i}]: {e}")),
            }
        }
        problems
    }

    fn tpm_settings(&self) -> TpmSettings {
        self.config.tpm.clone()
    }

    fn flux_sync(&self) -> FluxSync {
        let f = &self.config.flux;
        let mut sync = FluxSync::new(f.url.as_str(), f.branch.as_str(), f.path.as_str());
        sync.interval = f.kustomization_interval;
        sync.source_interval = f.interval;
        sync.secret_ref = f.secret_ref.as_ref().map(ToString::to_string);
        sync
    }

    async fn talos(&mut self) -> Result<&mut NodeClient, StepFailure> {
        let ClusterAccess::Talos { socket, .. } = &self.config.cluster else {
            return Err(StepFailure::config("the Talos API is not configured"));
        };
        if self.talos.is_none() {
            self.talos = Some(NodeClient::connect(socket).await?);
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
                Err(e.into())
            }
        }
    }

    async fn etcd(&mut self) -> Result<Outcome, StepFailure> {
        let client = self.talos().await?;
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

    async fn kubeconfig(&mut self) -> Result<Outcome, StepFailure> {
        let client = self.talos().await?;
        let kubeconfig = client.kubeconfig().await?;
        let size = kubeconfig.as_str().len();
        self.kubeconfig = Some(kubeconfig);
        self.cluster = None;
        Ok(Outcome::done(format!(
            "admin kubeconfig obtained ({size} bytes, kept in memory)"
        )))
    }

    async fn cluster(&mut self) -> Result<Cluster, StepFailure> {
        if let Some(c) = &self.cluster {
            return Ok(c.clone());
        }
        let cluster = match &self.config.cluster {
            ClusterAccess::Talos { .. } => {
                let Some(kc) = &self.kubeconfig else {
                    return Err(StepFailure::transient(
                        "no kubeconfig yet: the kubeconfig step has not run",
                    ));
                };
                Cluster::connect(kc.as_str()).await
            }
            ClusterAccess::Kubeconfig { path } => Cluster::connect_path(path).await,
        }?;
        self.cluster = Some(cluster.clone());
        Ok(cluster)
    }

    async fn kube_api(&mut self) -> Result<Outcome, StepFailure> {
        let cluster = self.cluster().await?;
        cluster.api_ready().await?;
        Ok(Outcome::done("the Kubernetes API is ready"))
    }

    async fn secrets(&mut self) -> Result<Outcome, StepFailure> {
        let mut inputs = Vec::new();
        let mut sealed_of = Vec::new();
        let mut missing = Vec::new();
        for secret in &self.config.secrets {
            match read_sealed(secret).map_err(StepFailure::config)? {
                Some(armor) => {
                    inputs.push(SealedInput {
                        label: secret.label(),
                        armor,
                        expect_age_identity: secret.format == SecretFormat::AgeIdentity,
                    });
                    sealed_of.push(secret.clone());
                }
                None => missing.push(secret.label()),
            }
        }
        let settings = self.tpm_settings();
        // Enrol (idempotent) and learn the recipient when some input is still missing.
        let waiting = if missing.is_empty() {
            None
        } else {
            match blocking(settings.clone(), |s| seal::unseal(&s, &[])).await? {
                Ok(UnsealOutcome::AwaitingSealedInput { recipient, command }) => {
                    Some(TpmRecord { recipient, command })
                }
                Ok(UnsealOutcome::Unsealed(_)) => None,
                Err(e) => return self.sealed_failure(e, &missing).await,
            }
        };
        let mut objects = Vec::new();
        let mut notes = Vec::new();
        if !inputs.is_empty() {
            let unsealed =
                match blocking(settings.clone(), move |s| seal::unseal(&s, &inputs)).await? {
                    Ok(UnsealOutcome::Unsealed(list)) => list,
                    Ok(UnsealOutcome::AwaitingSealedInput { .. }) => Vec::new(),
                    Err(e) => return self.sealed_failure(e, &[]).await,
                };
            let specs: Vec<SecretSpec> = sealed_of
                .iter()
                .zip(unsealed)
                .map(|(cfg, secret)| SecretSpec {
                    namespace: cfg.namespace.to_string(),
                    name: cfg.name.to_string(),
                    key: cfg.key.to_string(),
                    value: secret.value,
                    overwrite: cfg.overwrite,
                })
                .collect();
            let cluster = self.cluster().await?;
            let reports = cluster.seed_secrets(&specs).await?;
            drop(specs);
            for r in &reports {
                let message = match r.outcome {
                    SecretOutcome::Differs => {
                        notes.push(format!(
                            "{}/{} differs and was left untouched",
                            r.namespace, r.name
                        ));
                        "the cluster holds other content; left untouched (set overwrite: true to replace it)".to_string()
                    }
                    _ => format!("key {}", r.key),
                };
                objects.push(ObjectRecord {
                    kind: "Secret".into(),
                    namespace: Some(r.namespace.clone()),
                    name: r.name.clone(),
                    state: r.outcome.into(),
                    message,
                });
            }
            if missing.is_empty() {
                blocking(settings, |s| seal::lock(&s)).await??;
                notes.push(format!(
                    "PCR {} extended: the seed is locked until the next boot",
                    self.config.tpm.policy.lock_pcr()
                ));
            }
        }
        self.awaiting = waiting.clone();
        match waiting {
            Some(tpm) => Ok(Outcome::Waiting {
                message: format!(
                    "waiting for sealed input(s) for {}: seal them to recipient {}",
                    missing.join(", "),
                    tpm.recipient
                ),
                tpm: Some(tpm),
            }),
            None => {
                let created = objects
                    .iter()
                    .filter(|o| o.state == ObjectState::Created)
                    .count();
                let mut message =
                    format!("{} secret(s) in place, {created} created", objects.len());
                for n in notes {
                    message.push_str("; ");
                    message.push_str(&n);
                }
                Ok(Outcome::Done { message, objects })
            }
        }
    }

    /// An unseal failure. Locked means an earlier run of this boot already unsealed and then
    /// locked: fine when every Secret is in the cluster, otherwise the node has to reboot.
    async fn sealed_failure(
        &mut self,
        e: SealError,
        missing: &[String],
    ) -> Result<Outcome, StepFailure> {
        if matches!(e, SealError::Seed(SeedError::Locked { .. })) && missing.is_empty() {
            let cluster = self.cluster().await?;
            let mut absent = Vec::new();
            for s in &self.config.secrets {
                if !cluster
                    .secret_has_key(&s.namespace, &s.name, &s.key)
                    .await?
                {
                    absent.push(s.label());
                }
            }
            if absent.is_empty() {
                info!(
                    "the seed is locked for this boot and every secret is already in the cluster"
                );
                return Ok(Outcome::done(
                    "already seeded during this boot (the seed is locked until the next boot)",
                ));
            }
            return Err(StepFailure::permanent(format!(
                "the TPM seed is locked until the next boot and {} is missing from the cluster",
                absent.join(", ")
            ))
            .with_hint("reboot the node: the lock PCR resets and the agent unseals again"));
        }
        Err(e.into())
    }

    async fn bundle(&mut self) -> Result<Bundle, StepFailure> {
        if self.config.bundle.fetch {
            if let Some(Ok(b)) = &self.bundle {
                return Ok(b.clone());
            }
            let lock = BundleLock::load(&self.config.bundle.dir.join(LOCK_FILE))?;
            let bundle = Bundle::fetch(&lock, &FetchOptions::default()).await?;
            self.bundle = Some(Ok(bundle.clone()));
            return Ok(bundle);
        }
        match self.local_bundle() {
            Some(Ok(b)) => Ok(b.clone()),
            Some(Err(e)) => Err(StepFailure::permanent(format!("bundle: {e}")).with_hint(
                "rebuild the extension with a complete, pinned bundle, or set bundle.fetch: true",
            )),
            None => Err(StepFailure::permanent("bundle unavailable")),
        }
    }

    async fn crds(&mut self) -> Result<Outcome, StepFailure> {
        let bundle = self.bundle().await?;
        let cluster = self.cluster().await?;
        let reports = cluster
            .install_crds(&bundle, self.config.deadlines.crds)
            .await?;
        Ok(applied("definitions", reports))
    }

    async fn flux(&mut self) -> Result<Outcome, StepFailure> {
        let bundle = self.bundle().await?;
        let cluster = self.cluster().await?;
        let reports = cluster
            .install_flux(&bundle, self.config.deadlines.flux)
            .await?;
        Ok(applied("Flux components", reports))
    }

    async fn sync(&mut self) -> Result<Outcome, StepFailure> {
        let cluster = self.cluster().await?;
        let reports = cluster.apply_sync(&self.flux_sync()).await?;
        Ok(Outcome::Done {
            message: summary("sync objects", &reports),
            objects: records(reports),
        })
    }

    async fn ready(&mut self) -> Result<Outcome, StepFailure> {
        let cluster = self.cluster().await?;
        match cluster.check_ready(&self.flux_sync()).await? {
            Readiness::Ready(reports) => Ok(Outcome::Done { message: "Flux reports the sync Ready".into(), objects: records(reports) }),
            Readiness::Progressing(reports) => {
                let pending: Vec<String> = reports.iter().filter(|r| r.state != ObjectState::Ready).map(ToString::to_string).collect();
                Ok(Outcome::Pending { message: format!("waiting for {}", pending.join("; ")), objects: records(reports) })
            }
            // Without its sealed inputs (the SOPS key) Flux cannot decrypt: its failure is the
            // expected consequence of the wait, not a fault in Git.
            Readiness::Failed { object, message, .. } if self.awaiting.is_some() => Ok(Outcome::Waiting {
                message: format!("{object}: {message} (expected until the sealed inputs are in the configuration; see the secrets step)"),
                tpm: self.awaiting.clone(),
            }),
            Readiness::Failed { object, message, reports } => Err(StepFailure::permanent(format!("{object}: {message}"))
                .with_hint("this is Flux's own verdict: fix the cause in Git (or the cluster); Flux retries by itself")
                .with_objects(records(reports))),
        }
    }
}

impl Steps for Node {
    async fn attempt(&mut self, step: StepId) -> Result<Outcome, StepFailure> {
        match step {
            StepId::TalosApi => self.talos_api().await,
            StepId::Etcd => self.etcd().await,
            StepId::Kubeconfig => self.kubeconfig().await,
            StepId::KubeApi => self.kube_api().await,
            StepId::Secrets => self.secrets().await,
            StepId::Crds => self.crds().await,
            StepId::Flux => self.flux().await,
            StepId::Sync => self.sync().await,
            StepId::Ready => self.ready().await,
        }
    }
}

/// The armored sealed input of a secret, `None` when the operator has not sealed it yet.
fn read_sealed(secret: &SecretConfig) -> Result<Option<String>, String> {
    match &secret.sealed {
        None => Ok(None),
        Some(SealedSource::Inline(text)) => Ok(Some(text.clone())),
        Some(SealedSource::File(path)) => std::fs::read_to_string(path).map(Some).map_err(|e| {
            format!(
                "{}: cannot read sealed file {}: {e}",
                secret.label(),
                path.display()
            )
        }),
    }
}

/// Runs blocking TPM work off the async threads.
async fn blocking<T: Send + 'static>(
    settings: TpmSettings,
    work: impl FnOnce(TpmSettings) -> T + Send + 'static,
) -> Result<T, StepFailure> {
    tokio::task::spawn_blocking(move || work(settings))
        .await
        .map_err(|e| StepFailure::transient(format!("the TPM task failed: {e}")))
}

fn applied(what: &str, reports: Vec<ObjectReport>) -> Outcome {
    Outcome::Done {
        message: summary(what, &reports),
        objects: records(reports),
    }
}

fn summary(what: &str, reports: &[ObjectReport]) -> String {
    let mut counts: Vec<(ObjectState, usize)> = Vec::new();
    for r in reports {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.state, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str().to_lowercase()))
        .collect();
    format!(
        "{what}: {}",
        if parts.is_empty() {
            "nothing to do".into()
        } else {
            parts.join(", ")
        }
    )
}

fn records(reports: Vec<ObjectReport>) -> Vec<ObjectRecord> {
    reports.into_iter().map(ObjectRecord::from).collect()
}
