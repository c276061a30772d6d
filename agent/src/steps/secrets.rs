//! The `secrets` step: unseal the TPM seed, decrypt every sealed input, create its Secret
//! (`flux-system/sops-age` …), then extend the lock PCR so nothing can read the seed again this
//! boot. While an input is not sealed yet, the TPM is enrolled and the step waits for the
//! operator (the other steps still run).

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use super::{Awaiting, Context, Deadline, Outcome, Settings, Step, StepFailure};
use crate::kube::names::{DataKey, Name, Namespace};
use crate::kube::{ObjectReport, ObjectState, SecretOutcome, SecretReport, SecretSpec};
use crate::seal::{self, SealError, SealedInput, TpmSettings, UnsealOutcome, UnsealedSecret};
use crate::tpm::seed::SeedError;

/// One Kubernetes Secret the agent seeds from a sealed (age-encrypted to the TPM) input.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretSettings {
    pub namespace: Namespace,
    pub name: Name,
    /// Data key inside the Secret.
    pub key: DataKey,
    /// `None` until the operator has sealed the value to this TPM.
    pub sealed: Option<SealedSource>,
    pub format: SecretFormat,
    /// Replace a Secret whose content differs (never done unless asked for).
    pub overwrite: bool,
}

impl SecretSettings {
    /// `namespace/name`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The armored sealed input, `None` when the operator has not sealed it yet.
    pub fn read_sealed(&self) -> Result<Option<String>, String> {
        match &self.sealed {
            None => Ok(None),
            Some(SealedSource::Inline(text)) => Ok(Some(text.clone())),
            Some(SealedSource::File(path)) => {
                std::fs::read_to_string(path).map(Some).map_err(|e| {
                    format!(
                        "{}: cannot read sealed file {}: {e}",
                        self.label(),
                        path.display()
                    )
                })
            }
        }
    }
}

/// Where a sealed input is.
#[derive(Debug, Clone, PartialEq)]
pub enum SealedSource {
    /// ASCII-armored age file inline in the configuration.
    Inline(String),
    /// A file holding the ASCII-armored age file.
    File(PathBuf),
}

/// What the decrypted value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretFormat {
    /// An age identity (`AGE-SECRET-KEY-1...`), as SOPS and kustomize-controller expect.
    AgeIdentity,
    /// Any bytes (deploy keys, tokens).
    Raw,
}

/// `secrets`: unseal, create the Secrets, lock the seed.
pub(super) enum Secrets {}

impl Step for Secrets {
    const NAME: &'static str = "secrets";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(300));

    fn skip(settings: &Settings) -> Option<String> {
        settings
            .secrets
            .is_empty()
            .then(|| "no secrets configured".into())
    }

    fn action(settings: &Settings) -> String {
        let sealed = settings
            .secrets
            .iter()
            .filter(|s| s.sealed.is_some())
            .count();
        format!(
            "unseal {sealed} of {} secret(s) with the TPM at {} (PCRs {:?}), create them, then extend PCR {}",
            settings.secrets.len(),
            settings.tpm.address,
            settings.tpm.policy.pcrs(),
            settings.tpm.policy.lock_pcr()
        )
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let inputs = Inputs::read(&ctx.settings.secrets)?;
        let tpm = ctx.settings.tpm.clone();
        // Enrol (idempotent) and learn the recipient while some input is still missing.
        let awaiting = if inputs.missing.is_empty() {
            None
        } else {
            match blocking(tpm.clone(), |s| seal::unseal(&s, &[])).await? {
                Ok(UnsealOutcome::AwaitingSealedInput { recipient, command }) => {
                    Some(Awaiting { recipient, command })
                }
                Ok(UnsealOutcome::Unsealed(_)) => None,
                Err(e) => return ctx.unseal_failed(e, &inputs.missing).await,
            }
        };
        let mut objects = Vec::new();
        let mut notes = Vec::new();
        if !inputs.sealed.is_empty() {
            let sealed = inputs.sealed_inputs();
            let unsealed = match blocking(tpm.clone(), move |s| seal::unseal(&s, &sealed)).await? {
                Ok(UnsealOutcome::Unsealed(list)) => list,
                Ok(UnsealOutcome::AwaitingSealedInput { .. }) => Vec::new(),
                Err(e) => return ctx.unseal_failed(e, &[]).await,
            };
            let reports = ctx.seed(&inputs.sealed, unsealed).await?;
            for r in reports {
                if r.outcome == SecretOutcome::Differs {
                    notes.push(format!(
                        "{}/{} differs and was left untouched",
                        r.namespace, r.name
                    ));
                }
                objects.push(object(r));
            }
            if inputs.missing.is_empty() {
                blocking(tpm.clone(), |s| seal::lock(&s)).await??;
                notes.push(format!(
                    "PCR {} extended: the seed is locked until the next boot",
                    tpm.policy.lock_pcr()
                ));
            }
        }
        ctx.awaiting = awaiting.clone();
        Ok(match awaiting {
            Some(awaiting) => Outcome::Waiting {
                message: format!(
                    "waiting for sealed input(s) for {}: seal them to recipient {}",
                    inputs.missing.join(", "),
                    awaiting.recipient
                ),
                awaiting: Some(awaiting),
            },
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
                Outcome::Done { message, objects }
            }
        })
    }
}

/// The configured secrets, split into those sealed (with their armor) and those still missing.
struct Inputs {
    sealed: Vec<(SecretSettings, String)>,
    /// Labels of the secrets not sealed yet.
    missing: Vec<String>,
}

impl Inputs {
    fn read(secrets: &[SecretSettings]) -> Result<Inputs, StepFailure> {
        let mut inputs = Inputs {
            sealed: Vec::new(),
            missing: Vec::new(),
        };
        for secret in secrets {
            match secret.read_sealed().map_err(StepFailure::config)? {
                Some(armor) => inputs.sealed.push((secret.clone(), armor)),
                None => inputs.missing.push(secret.label()),
            }
        }
        Ok(inputs)
    }

    fn sealed_inputs(&self) -> Vec<SealedInput> {
        self.sealed
            .iter()
            .map(|(secret, armor)| SealedInput {
                label: secret.label(),
                armor: armor.clone(),
                expect_age_identity: secret.format == SecretFormat::AgeIdentity,
            })
            .collect()
    }
}

/// The status line of one seeded Secret (never its value).
fn object(r: SecretReport) -> ObjectReport {
    let message = match r.outcome {
        SecretOutcome::Differs => {
            "the cluster holds other content; left untouched (set overwrite: true to replace it)"
                .to_string()
        }
        _ => format!("key {}", r.key),
    };
    ObjectReport::new("Secret", &r.namespace, &r.name, r.outcome.into(), message)
}

impl Context {
    /// Creates the Secrets of the unsealed values; the values are zeroised when dropped.
    async fn seed(
        &mut self,
        sealed: &[(SecretSettings, String)],
        unsealed: Vec<UnsealedSecret>,
    ) -> Result<Vec<SecretReport>, StepFailure> {
        let specs: Vec<SecretSpec> = sealed
            .iter()
            .zip(unsealed)
            .map(|((secret, _), value)| SecretSpec {
                namespace: secret.namespace.to_string(),
                name: secret.name.to_string(),
                key: secret.key.to_string(),
                value: value.value,
                overwrite: secret.overwrite,
            })
            .collect();
        let cluster = self.cluster().await?;
        Ok(cluster.seed_secrets(&specs).await?)
    }

    /// An unseal failure. Locked means an earlier run of this boot already unsealed and then
    /// locked: fine when every Secret is in the cluster, otherwise the node has to reboot.
    async fn unseal_failed(
        &mut self,
        e: SealError,
        missing: &[String],
    ) -> Result<Outcome, StepFailure> {
        if !(matches!(e, SealError::Seed(SeedError::Locked { .. })) && missing.is_empty()) {
            return Err(e.into());
        }
        let cluster = self.cluster().await?;
        let mut absent = Vec::new();
        for s in &self.settings.secrets {
            if !cluster
                .secret_has_key(&s.namespace, &s.name, &s.key)
                .await?
            {
                absent.push(s.label());
            }
        }
        if absent.is_empty() {
            info!("the seed is locked for this boot and every secret is already in the cluster");
            return Ok(Outcome::done(
                "already seeded during this boot (the seed is locked until the next boot)",
            ));
        }
        Err(StepFailure::permanent(format!(
            "the TPM seed is locked until the next boot and {} is missing from the cluster",
            absent.join(", ")
        ))
        .with_hint("reboot the node: the lock PCR resets and the agent unseals again"))
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
