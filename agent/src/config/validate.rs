//! Raw input → the validated [`Config`]. Values are parsed into the types their modules own (a
//! TPM address, a PCR policy, Kubernetes names, a Git source); this module only says which field
//! and line a problem is about, checks what spans fields (both `talos` and `kubernetes`, a
//! Secret configured twice), and collects every problem before giving up.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::*;
use super::*;
use crate::duration::parse_duration;
use crate::error::Invalid;
use crate::kube::FluxSync;
use crate::kube::names::{DataKey, Name, Namespace};
use crate::kube::source::{Branch, GitUrl, RepoPath};
use crate::seal::{self, KeyFactor, PcrField, PcrPolicy, TpmSettings};
use crate::secureboot;
use crate::steps::StepId;
use crate::tpm::transport::Address;

pub(super) struct Validator<'a> {
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Problem>,
}

fn line<T>(s: &Spanned<T>) -> Option<u64> {
    let l = s.referenced.line();
    (l > 0).then_some(l)
}

const DURATION_FIX: &str = "use a duration such as `30s`, `5m` or `1h`";

impl Validator<'_> {
    fn problem(
        &mut self,
        field: impl Into<String>,
        line: Option<u64>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            field: field.into(),
            line,
            message: message.into(),
            fix: fix.into(),
        });
    }

    fn invalid(&mut self, field: impl Into<String>, line: Option<u64>, invalid: Invalid) {
        self.problem(field, line, invalid.message, invalid.fix);
    }

    /// Parses a value into the type that models it; a problem names `field` and its line.
    fn parse<T: FromStr<Err = Invalid>>(
        &mut self,
        field: &str,
        value: &Spanned<String>,
    ) -> Option<T> {
        value
            .value
            .parse()
            .map_err(|e| self.invalid(field, line(value), e))
            .ok()
    }

    /// Resolves a path relative to the configuration file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn non_empty_path(&mut self, field: &str, value: &Spanned<String>) -> Option<PathBuf> {
        if value.value.trim().is_empty() {
            self.problem(field, line(value), "is empty", "give a path");
            return None;
        }
        Some(self.path(&value.value))
    }

    fn duration(
        &mut self,
        field: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        let Some(value) = value else {
            return Some(default);
        };
        match parse_duration(&value.value) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.problem(field, line(value), "must be longer than zero", DURATION_FIX);
                None
            }
            Err(e) => {
                self.problem(
                    field,
                    line(value),
                    format!("`{}` is not a duration: {e}", value.value),
                    DURATION_FIX,
                );
                None
            }
        }
    }

    /// The whole configuration, or `None` when something is wrong (the problems say what).
    pub(super) fn config(
        &mut self,
        raw: RawConfig,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Config> {
        let cluster = self.cluster(raw.talos, raw.kubernetes);
        let tpm = self.tpm(raw.tpm, env);
        let secrets = self.secrets(raw.secrets);
        if let (Some(tpm), Some(secrets)) = (&tpm, &secrets) {
            self.tpm_for_secrets(tpm, secrets);
        }
        let bundle = self.bundle(raw.bundle);
        let flux = self.flux(raw.flux);
        let status = match (env(env::STATUS), &raw.status) {
            (Some(s), _) => Some(PathBuf::from(s)),
            (None, Some(s)) => self.non_empty_path("status", s),
            (None, None) => Some(PathBuf::from(DEFAULT_STATUS)),
        };
        let deadlines = self.deadlines(raw.deadlines, env);
        let retry = self.retry(raw.retry, env);
        Some(Config {
            source: path.to_path_buf(),
            steps: Settings {
                cluster: cluster?,
                tpm: tpm?,
                secrets: secrets?,
                bundle: bundle?,
                flux: flux?,
                deadlines: deadlines?,
            },
            status: status?,
            retry: retry?,
        })
    }

    fn cluster(
        &mut self,
        talos: Option<Spanned<RawTalos>>,
        kube: Option<Spanned<RawKubernetes>>,
    ) -> Option<ClusterAccess> {
        match (talos, kube) {
            (Some(t), Some(k)) => {
                self.problem(
                    "kubernetes",
                    line(&k),
                    format!("both `talos` (line {}) and `kubernetes` are set", t.referenced.line()),
                    "keep `talos` on a Talos node (the kubeconfig comes from machined) or `kubernetes` elsewhere, not both",
                );
                self.talos(t.value);
                None
            }
            (Some(t), None) => self.talos(t.value),
            (None, Some(k)) => match k.value.kubeconfig {
                Some(p) => self
                    .non_empty_path("kubernetes.kubeconfig", &p)
                    .map(|path| ClusterAccess::Kubeconfig { path }),
                None => {
                    self.problem(
                        "kubernetes.kubeconfig",
                        line(&k),
                        "is missing",
                        "give the path of a kubeconfig file",
                    );
                    None
                }
            },
            (None, None) => {
                self.problem(
                    "talos",
                    None,
                    "neither `talos` nor `kubernetes` is set: the agent does not know how to reach the cluster",
                    "add `talos: {}` on a Talos node, or `kubernetes: {kubeconfig: PATH}` for any other cluster",
                );
                None
            }
        }
    }

    fn talos(&mut self, raw: RawTalos) -> Option<ClusterAccess> {
        let socket = match &raw.socket {
            Some(s) if !Path::new(&s.value).is_absolute() => {
                self.problem(
                    "talos.socket",
                    line(s),
                    format!("`{}` is not an absolute path", s.value),
                    format!("use {DEFAULT_TALOS_SOCKET}"),
                );
                return None;
            }
            Some(s) => PathBuf::from(&s.value),
            None => PathBuf::from(DEFAULT_TALOS_SOCKET),
        };
        Some(ClusterAccess::Talos {
            socket,
            bootstrap_etcd: raw.bootstrap_etcd.unwrap_or(true),
        })
    }

    fn tpm(
        &mut self,
        raw: Option<RawTpm>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<TpmSettings> {
        let raw = raw.unwrap_or(RawTpm {
            device: None,
            pcrs: None,
            lock_pcr: None,
            nv_index: None,
            salt_key_name: None,
            insecure_transport: None,
            recipient: None,
            factor: None,
            efivars: None,
        });
        let mut address = match &raw.device {
            Some(d) => self.parse::<Address>("tpm.device", d),
            None => Some(Address::default()),
        };
        if let Some(text) = env(env::TPM) {
            address = text
                .parse()
                .map_err(|e| self.invalid(format!("env {}", env::TPM), None, e))
                .ok();
        }
        let pcrs = raw.pcrs.as_ref();
        let lock = raw.lock_pcr.as_ref();
        let policy = match PcrPolicy::new(
            pcrs.map_or(DEFAULT_PCRS.to_vec(), |p| p.value.clone()),
            lock.map_or(DEFAULT_LOCK_PCR, |l| l.value),
        ) {
            Ok(p) => Some(p),
            Err(problems) => {
                for (about, invalid) in problems {
                    match about {
                        PcrField::Pcrs => self.invalid("tpm.pcrs", pcrs.and_then(line), invalid),
                        PcrField::LockPcr => self.invalid(
                            "tpm.lockPcr",
                            lock.and_then(line).or(pcrs.and_then(line)),
                            invalid,
                        ),
                    }
                }
                None
            }
        };
        let nv_index = match &raw.nv_index {
            None => Some(seal::DEFAULT_NV_INDEX),
            Some(n) => {
                let number = match &n.value {
                    RawNumber::Int(i) => Ok(*i),
                    RawNumber::Text(t) => {
                        let t = t.trim();
                        match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                            Some(hex) => u64::from_str_radix(hex, 16),
                            None => t.parse(),
                        }
                        .map_err(|_| {
                            Invalid::new(
                                format!("`{t}` is not a number"),
                                "write the NV index in hex, e.g. \"0x01305EED\", or leave it out",
                            )
                        })
                    }
                };
                number
                    .and_then(seal::nv_index)
                    .map_err(|e| self.invalid("tpm.nvIndex", line(n), e))
                    .ok()
            }
        };
        let salt_key_name = match &raw.salt_key_name {
            None => Some(None),
            Some(n) => seal::salt_key_name(&n.value)
                .map(Some)
                .map_err(|e| self.invalid("tpm.saltKeyName", line(n), e))
                .ok(),
        };
        let recipient = match &raw.recipient {
            None => Some(None),
            Some(r) => seal::parse_recipient(&r.value)
                .map(Some)
                .map_err(|e| self.invalid("tpm.recipient", line(r), e))
                .ok(),
        };
        let factor = match &raw.factor {
            None => Some(None),
            Some(f) => self.parse::<KeyFactor>("tpm.factor", f).map(Some),
        };
        let efivars = match &raw.efivars {
            None => Some(PathBuf::from(secureboot::SERVICE_EFIVARS)),
            Some(p) => self.non_empty_path("tpm.efivars", p),
        };
        let settings = TpmSettings {
            address: address?,
            policy: policy?,
            nv_index: nv_index?,
            salt_key_name: salt_key_name?,
            insecure_transport: raw.insecure_transport.unwrap_or(false),
            recipient: recipient?,
            factor: factor?,
            efivars: efivars?,
        };
        if let Some(problem) = settings.transport_problem() {
            self.invalid("tpm.device", raw.device.as_ref().and_then(line), problem);
            return None;
        }
        Some(settings)
    }

    /// What the TPM settings must hold once secrets are configured: the key factor (always),
    /// and the recipient the sealed inputs were made for (as soon as one is sealed).
    fn tpm_for_secrets(&mut self, tpm: &TpmSettings, secrets: &[SecretSettings]) {
        if secrets.is_empty() {
            return;
        }
        if tpm.factor.is_none() {
            self.problem(
                "tpm.factor",
                None,
                "is missing: the identity secrets are sealed to needs both the TPM's seed and this factor",
                "add 32 random bytes in hex (Terraform: random_bytes.tpm_factor.hex; by hand: `openssl rand -hex 32`), before the first boot",
            );
        }
        if tpm.recipient.is_none()
            && let Some(i) = secrets.iter().position(|s| s.sealed.is_some())
        {
            self.problem(
                "tpm.recipient",
                None,
                format!(
                    "is missing while secrets[{i}] is sealed: without the pinned recipient a seed planted in the TPM could not be told from ours"
                ),
                "pin the recipient the inputs were sealed to (shown by `bootstrap-agent status` while the first boot waits, or printed by `tpm enroll`)",
            );
        }
    }

    fn secrets(&mut self, raw: Vec<Spanned<RawSecret>>) -> Option<Vec<SecretSettings>> {
        let mut out = Vec::new();
        let mut complete = true;
        let mut seen = BTreeSet::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let secret = self.secret(i, entry, &mut seen);
            complete &= secret.is_some();
            out.extend(secret);
        }
        complete.then_some(out)
    }

    fn secret(
        &mut self,
        i: usize,
        entry: Spanned<RawSecret>,
        seen: &mut BTreeSet<(Namespace, Name)>,
    ) -> Option<SecretSettings> {
        let at = line(&entry);
        let r = entry.value;
        let f = |name: &str| format!("secrets[{i}].{name}");
        let namespace = match &r.namespace {
            Some(ns) => self.parse::<Namespace>(&f("namespace"), ns),
            None => FLUX_NAMESPACE.parse().ok(),
        };
        let name = match &r.name {
            Some(n) => self.parse::<Name>(&f("name"), n),
            None => {
                self.problem(
                    f("name"),
                    at,
                    "is missing",
                    "name the Kubernetes Secret, e.g. sops-age",
                );
                None
            }
        };
        let key = match &r.key {
            Some(k) => self.parse::<DataKey>(&f("key"), k),
            None => {
                self.problem(
                    f("key"),
                    at,
                    "is missing",
                    "give the data key, e.g. age.agekey",
                );
                None
            }
        };
        let is_agekey = key.as_ref().is_some_and(|k| k.ends_with(".agekey"));
        let format = match &r.format {
            None if is_agekey => Some(SecretFormat::AgeIdentity),
            None => Some(SecretFormat::Raw),
            Some(s) => match s.value.as_str() {
                "ageIdentity" => Some(SecretFormat::AgeIdentity),
                "raw" => Some(SecretFormat::Raw),
                other => {
                    self.problem(
                        f("format"),
                        line(s),
                        format!("`{other}` is not a format"),
                        "use `ageIdentity` or `raw`",
                    );
                    None
                }
            },
        };
        if let (Some(SecretFormat::AgeIdentity), Some(ns), Some(k)) = (&format, &namespace, &key)
            && ns.as_str() == FLUX_NAMESPACE
            && !is_agekey
        {
            self.problem(
                f("key"),
                r.key.as_ref().and_then(line),
                format!("`{k}` does not end in `.agekey`: kustomize-controller ignores it"),
                "use `age.agekey`",
            );
        }
        let sealed = match (r.sealed, r.sealed_file) {
            (Some(_), Some(file)) => {
                self.problem(
                    f("sealedFile"),
                    line(&file),
                    "both `sealed` and `sealedFile` are set",
                    "keep one of them",
                );
                None
            }
            (Some(s), None) => {
                let text = s.value.trim();
                if text.is_empty() {
                    Some(None)
                } else if !text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
                    || !text.ends_with("-----END AGE ENCRYPTED FILE-----")
                {
                    self.problem(
                        f("sealed"),
                        line(&s),
                        "is not an ASCII-armored age file",
                        "paste the whole output of `age -a -r <recipient>`, BEGIN and END lines included",
                    );
                    None
                } else {
                    Some(Some(SealedSource::Inline(s.value)))
                }
            }
            (None, Some(file)) => self
                .non_empty_path(&f("sealedFile"), &file)
                .map(|p| Some(SealedSource::File(p))),
            (None, None) => Some(None),
        };
        if let (Some(ns), Some(n)) = (&namespace, &name)
            && !seen.insert((ns.clone(), n.clone()))
        {
            self.problem(
                f("name"),
                at,
                format!("{ns}/{n} is configured twice"),
                "keep one entry per Secret",
            );
            return None;
        }
        Some(SecretSettings {
            namespace: namespace?,
            name: name?,
            key: key?,
            sealed: sealed?,
            format: format?,
            overwrite: r.overwrite.unwrap_or(false),
        })
    }

    fn bundle(&mut self, raw: Option<RawBundle>) -> Option<BundleSettings> {
        let raw = raw.unwrap_or(RawBundle {
            dir: None,
            fetch: None,
        });
        let dir = match &raw.dir {
            Some(d) => self.non_empty_path("bundle.dir", d)?,
            None => PathBuf::from(DEFAULT_BUNDLE_DIR),
        };
        Some(BundleSettings {
            dir,
            fetch: raw.fetch.unwrap_or(false),
        })
    }

    fn flux(&mut self, raw: Option<Spanned<RawFlux>>) -> Option<FluxSync> {
        let Some(raw) = raw else {
            self.problem("flux", None, "is missing", "add `flux: {url: https://github.com/OWNER/REPO, branch: main, path: ./kubernetes/flux-system}`");
            return None;
        };
        let at = line(&raw);
        let r = raw.value;
        let url = match &r.url {
            Some(u) => self.parse::<GitUrl>("flux.url", u),
            None => {
                self.problem(
                    "flux.url",
                    at,
                    "is missing",
                    "give the Git repository Flux syncs from",
                );
                None
            }
        };
        let branch = match &r.branch {
            Some(b) => self.parse::<Branch>("flux.branch", b),
            None => Some(Branch::default()),
        };
        let path = match &r.path {
            Some(p) => self.parse::<RepoPath>("flux.path", p),
            None => Some(RepoPath::default()),
        };
        let interval = self.duration(
            "flux.interval",
            r.interval.as_ref(),
            Duration::from_secs(60),
        );
        let kustomization_interval = self.duration(
            "flux.kustomizationInterval",
            r.kustomization_interval.as_ref(),
            Duration::from_secs(600),
        );
        let secret_ref = match &r.secret_ref {
            Some(s) => self.parse::<Name>("flux.secretRef", s).map(Some),
            None => Some(None),
        };
        if url.as_ref().is_some_and(GitUrl::is_ssh) && r.secret_ref.is_none() {
            self.problem(
                "flux.secretRef",
                at,
                "an ssh:// URL needs Git credentials",
                "seal a deploy key as a secret in flux-system and name it in flux.secretRef",
            );
            return None;
        }
        let mut sync = FluxSync::new(url?.as_str(), branch?.as_str(), path?.as_str());
        sync.source_interval = interval?;
        sync.interval = kustomization_interval?;
        sync.secret_ref = secret_ref?.map(|n| n.to_string());
        Some(sync)
    }

    fn deadlines(
        &mut self,
        raw: Option<RawDeadlines>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Deadlines> {
        let mut deadlines = Deadlines::default();
        let mut complete = true;
        let raw = raw.unwrap_or_default();
        for step in StepId::ALL {
            let Some(key) = step.deadline_key() else {
                continue;
            };
            let Some(value) = raw.get(&key) else {
                continue;
            };
            let field = format!("deadlines.{key}");
            match self.duration(&field, Some(value), Duration::ZERO) {
                Some(d) => deadlines.set(step, d),
                None => complete = false,
            }
        }
        if let Some(scale) = env(env::DEADLINE_SCALE) {
            match scale.parse::<f64>() {
                Ok(f) if f > 0.0 && f.is_finite() => deadlines = deadlines.scaled(f),
                _ => {
                    self.problem(
                        format!("env {}", env::DEADLINE_SCALE),
                        None,
                        format!("`{scale}` is not a positive number"),
                        "use e.g. 0.5 or 2",
                    );
                    return None;
                }
            }
        }
        complete.then_some(deadlines)
    }

    fn retry(
        &mut self,
        raw: Option<RawRetry>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<RetryConfig> {
        let d = RetryConfig::default();
        let mut retry = match raw {
            None => d,
            Some(r) => {
                let initial = self.duration("retry.initial", r.initial.as_ref(), d.initial);
                let max = self.duration("retry.max", r.max.as_ref(), d.max);
                RetryConfig {
                    initial: initial?,
                    max: max?,
                }
            }
        };
        if let Some(max) = env(env::RETRY_MAX) {
            match parse_duration(&max) {
                Ok(d) if !d.is_zero() => retry.max = d,
                _ => {
                    self.problem(
                        format!("env {}", env::RETRY_MAX),
                        None,
                        format!("`{max}` is not a positive duration"),
                        "use e.g. 5s",
                    );
                    return None;
                }
            }
        }
        retry.initial = retry.initial.min(retry.max);
        Some(retry)
    }
}
