//! The TPM steps: `unseal`, the first step of every run, reads the seed, decrypts every sealed
//! input into zeroising memory and extends the lock PCR, on success and on failure, so that no
//! later step and no exit path (success, waiting, failure, signal) leaves the seed readable;
//! `secrets`, after `kube-api`, creates the Secrets (`flux-system/sops-age` …) from what
//! `unseal` decrypted and drops the plaintext. While an input is not sealed yet, the first boot
//! enrols the TPM, locks it too, and the run waits for the operator (the other steps still
//! run); what is sealed then is unsealed on the next boot.
//!
//! A new run in the same boot finds the seed locked: fine when every sealed Secret is in the
//! cluster, otherwise a permanent failure asking for a reboot. So that a transient failure
//! between the two steps does not come to that, `run` keeps the decrypted inputs and runs the
//! sequence again in the same process rather than exiting (`Context::holds_unsealed`).

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use super::{Awaiting, Context, Deadline, Outcome, Settings, Step, StepFailure};
use crate::kube::names::{DataKey, Name, Namespace};
use crate::kube::{ObjectReport, ObjectState, SecretOutcome, SecretReport, SecretSpec};
use crate::seal::{self, SealError, SealedInput, TpmSettings, UnsealedSecret};
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

fn no_secrets(settings: &Settings) -> Option<String> {
    settings
        .secrets
        .is_empty()
        .then(|| "no secrets configured".into())
}

/// `unseal`: read the seed (or enrol on a first boot), check the pinned recipient, decrypt
/// every sealed input, and extend the lock PCR, on success and failure alike.
pub(super) enum Unseal {}

impl Step for Unseal {
    const NAME: &'static str = "unseal";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(120));

    fn skip(settings: &Settings) -> Option<String> {
        no_secrets(settings)
    }

    fn action(settings: &Settings) -> String {
        let sealed = settings
            .secrets
            .iter()
            .filter(|s| s.sealed.is_some())
            .count();
        format!(
            "read the seed from the TPM at {} (PCRs {:?}){}, decrypt {sealed} of {} sealed input(s), then extend PCR {}",
            settings.tpm.address,
            settings.tpm.policy.pcrs(),
            if sealed == 0 && settings.tpm.recipient.is_none() {
                ", enrolling it if it has none"
            } else {
                ""
            },
            settings.secrets.len(),
            settings.tpm.policy.lock_pcr()
        )
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let inputs = Inputs::read(&ctx.settings.secrets)?;
        let tpm = ctx.settings.tpm.clone();
        let lock_pcr = tpm.policy.lock_pcr();
        if ctx.unsealed.is_some() {
            return Ok(Outcome::done(format!(
                "decrypted by an earlier run of this process; the seed is locked (PCR {lock_pcr} extended)"
            )));
        }
        let sealed = inputs.sealed_inputs();
        let count = sealed.len();
        match blocking(tpm.clone(), move |s| seal::unseal(&s, &sealed)).await? {
            Ok(unsealed) => {
                if !inputs.missing.is_empty() {
                    ctx.awaiting = Some(Awaiting {
                        command: unsealed.command(),
                        recipient: unsealed.recipient.clone(),
                        salt_key_name: Some(unsealed.salt_key_name.clone()),
                    });
                }
                let what = if unsealed.enrolled {
                    format!("enrolled this TPM (recipient {})", unsealed.recipient)
                } else {
                    format!("{count} sealed input(s) decrypted")
                };
                ctx.unsealed = Some(unsealed.secrets);
                Ok(Outcome::done(format!(
                    "{what}; PCR {lock_pcr} extended: the seed is locked until the next boot"
                )))
            }
            Err(SealError::Seed(SeedError::Locked { .. })) => {
                // An earlier run of this boot unsealed and locked: the secrets step checks that
                // what it created is in the cluster. While waiting, the recipient is the pinned
                // one, or the one the status recorded when this boot enrolled.
                if !inputs.missing.is_empty() {
                    ctx.awaiting = tpm.recipient.as_ref().map(|r| Awaiting {
                        recipient: r.clone(),
                        command: format!(
                            "age -a -r {r} -o {} {}",
                            seal::SEALED_FILE_HINT,
                            seal::KEY_FILE_HINT
                        ),
                        salt_key_name: tpm.salt_key_name.clone(),
                    });
                }
                info!("the seed is already locked this boot");
                Ok(Outcome::done(format!(
                    "the seed is already locked this boot (PCR {lock_pcr} extended by an earlier run): nothing decrypted now"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `secrets`: create the Secrets from what `unseal` decrypted, then drop the plaintext.
pub(super) enum Secrets {}

impl Step for Secrets {
    const NAME: &'static str = "secrets";
    const DEADLINE: Deadline = Deadline::Own(Duration::from_secs(300));

    fn skip(settings: &Settings) -> Option<String> {
        no_secrets(settings)
    }

    fn action(settings: &Settings) -> String {
        let sealed = settings
            .secrets
            .iter()
            .filter(|s| s.sealed.is_some())
            .count();
        format!(
            "create {sealed} of {} secret(s) from the unsealed inputs",
            settings.secrets.len()
        )
    }

    async fn attempt(ctx: &mut Context) -> Result<Outcome, StepFailure> {
        let inputs = Inputs::read(&ctx.settings.secrets)?;
        let mut objects = Vec::new();
        let mut notes = Vec::new();
        if !inputs.sealed.is_empty() {
            let Some(unsealed) = &ctx.unsealed else {
                return ctx.locked_earlier(&inputs).await;
            };
            let specs = specs(&inputs.sealed, unsealed);
            let cluster = ctx.cluster().await?;
            let reports = cluster.seed_secrets(&specs).await?;
            // In the cluster: the plaintext is no longer needed.
            drop(specs);
            ctx.unsealed = None;
            for r in reports {
                if r.outcome == SecretOutcome::Differs {
                    notes.push(format!(
                        "{}/{} differs and was left untouched",
                        r.namespace, r.name
                    ));
                }
                objects.push(object(r));
            }
        }
        if !inputs.missing.is_empty() {
            return Ok(Outcome::Waiting {
                message: format!(
                    "waiting for sealed input(s) for {}: seal them to {}, put them in the configuration and reboot the node (the seed is locked until the next boot)",
                    inputs.missing.join(", "),
                    ctx.awaiting.as_ref().map_or_else(
                        || "the recipient shown when this TPM was enrolled".to_string(),
                        |a| format!("recipient {}", a.recipient)
                    )
                ),
                awaiting: ctx.awaiting.clone(),
            });
        }
        let created = objects
            .iter()
            .filter(|o| o.state == ObjectState::Created)
            .count();
        let mut message = format!("{} secret(s) in place, {created} created", objects.len());
        for n in notes {
            message.push_str("; ");
            message.push_str(&n);
        }
        Ok(Outcome::Done { message, objects })
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

/// The Secrets to create: a copy of each value (zeroised with the spec), so that a failed
/// attempt can be retried with the plaintext the unseal step kept.
fn specs(sealed: &[(SecretSettings, String)], unsealed: &[UnsealedSecret]) -> Vec<SecretSpec> {
    sealed
        .iter()
        .zip(unsealed)
        .map(|((secret, _), value)| SecretSpec {
            namespace: secret.namespace.to_string(),
            name: secret.name.to_string(),
            key: secret.key.to_string(),
            value: value.value.clone(),
            overwrite: secret.overwrite,
        })
        .collect()
}

impl Context {
    /// The seed was locked by an earlier run of this boot, so nothing was decrypted now: fine
    /// when every sealed Secret is in the cluster, otherwise the node has to reboot.
    async fn locked_earlier(&mut self, inputs: &Inputs) -> Result<Outcome, StepFailure> {
        let cluster = self.cluster().await?;
        let mut absent = Vec::new();
        for (s, _) in &inputs.sealed {
            if !cluster
                .secret_has_key(&s.namespace, &s.name, &s.key)
                .await?
            {
                absent.push(s.label());
            }
        }
        if absent.is_empty() {
            info!(
                "the seed is locked for this boot and every sealed secret is already in the cluster"
            );
            let message = if inputs.missing.is_empty() {
                "already seeded during this boot (the seed is locked until the next boot)".into()
            } else {
                format!(
                    "sealed secrets already in the cluster; waiting for sealed input(s) for {}",
                    inputs.missing.join(", ")
                )
            };
            return Ok(if inputs.missing.is_empty() {
                Outcome::done(message)
            } else {
                Outcome::Waiting {
                    message,
                    awaiting: self.awaiting.clone(),
                }
            });
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
