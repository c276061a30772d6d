//! Raw input → the validated [`Config`]: every problem collected with its field, line and fix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::*;
use super::*;
use crate::duration::parse_duration;

pub(super) struct Validator<'a> {
    pub(super) base: &'a Path,
    pub(super) problems: Vec<Problem>,
}

fn line<T>(s: &Spanned<T>) -> Option<u64> {
    let l = s.referenced.line();
    (l > 0).then_some(l)
}

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

    /// Resolves a path relative to the configuration file's directory.
    fn path(&self, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn non_empty_path(&mut self, field: &str, value: &Spanned<String>) -> PathBuf {
        if value.value.trim().is_empty() {
            self.problem(field, line(value), "is empty", "give a path");
        }
        self.path(&value.value)
    }

    fn duration(
        &mut self,
        field: &str,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match parse_duration(&value.value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(
                    field,
                    line(value),
                    "must be longer than zero",
                    "use a duration such as `30s`, `5m` or `1h`",
                );
                default
            }
            Err(e) => {
                self.problem(
                    field,
                    line(value),
                    format!("`{}` is not a duration: {e}", value.value),
                    "use a duration such as `30s`, `5m` or `1h`",
                );
                default
            }
        }
    }

    pub(super) fn config(
        &mut self,
        raw: RawConfig,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Config {
        let cluster = self.cluster(raw.talos, raw.kubernetes);
        let mut tpm = self.tpm(raw.tpm);
        if let Some(addr) = env(env::TPM) {
            if let Err(e) = check_tpm_address(&addr) {
                self.problem(
                    format!("env {}", env::TPM),
                    None,
                    e,
                    "use /dev/tpmrm0, tcp://HOST:PORT or unix:///PATH",
                );
            }
            tpm.address = addr;
        }
        let secrets = self.secrets(raw.secrets);
        let bundle = self.bundle(raw.bundle);
        let flux = self.flux(raw.flux, &secrets);
        let mut status = match &raw.status {
            Some(s) => self.non_empty_path("status", s),
            None => PathBuf::from(DEFAULT_STATUS),
        };
        if let Some(s) = env(env::STATUS) {
            status = PathBuf::from(s);
        }
        let mut deadlines = self.deadlines(raw.deadlines);
        if let Some(scale) = env(env::DEADLINE_SCALE) {
            match scale.parse::<f64>() {
                Ok(f) if f > 0.0 && f.is_finite() => deadlines = deadlines.scaled(f),
                _ => self.problem(
                    format!("env {}", env::DEADLINE_SCALE),
                    None,
                    format!("`{scale}` is not a positive number"),
                    "use e.g. 0.5 or 2",
                ),
            }
        }
        let mut retry = self.retry(raw.retry);
        if let Some(max) = env(env::RETRY_MAX) {
            match parse_duration(&max) {
                Ok(d) if !d.is_zero() => retry.max = d,
                _ => self.problem(
                    format!("env {}", env::RETRY_MAX),
                    None,
                    format!("`{max}` is not a positive duration"),
                    "use e.g. 5s",
                ),
            }
        }
        if retry.initial > retry.max {
            retry.initial = retry.max;
        }
        Config {
            source: path.to_path_buf(),
            cluster,
            tpm,
            secrets,
            bundle,
            flux,
            status,
            deadlines,
            retry,
        }
    }

    fn cluster(
        &mut self,
        talos: Option<Spanned<RawTalos>>,
        kube: Option<Spanned<RawKubernetes>>,
    ) -> ClusterAccess {
        match (talos, kube) {
            (Some(t), Some(k)) => {
                self.problem(
                    "kubernetes",
                    line(&k),
                    format!("both `talos` (line {}) and `kubernetes` are set", t.referenced.line()),
                    "keep `talos` on a Talos node (the kubeconfig comes from machined) or `kubernetes` elsewhere, not both",
                );
                self.talos(t.value)
            }
            (Some(t), None) => self.talos(t.value),
            (None, Some(k)) => match k.value.kubeconfig {
                Some(p) => ClusterAccess::Kubeconfig {
                    path: self.non_empty_path("kubernetes.kubeconfig", &p),
                },
                None => {
                    self.problem(
                        "kubernetes.kubeconfig",
                        line(&k),
                        "is missing",
                        "give the path of a kubeconfig file",
                    );
                    ClusterAccess::Kubeconfig {
                        path: PathBuf::new(),
                    }
                }
            },
            (None, None) => {
                self.problem(
                    "talos",
                    None,
                    "neither `talos` nor `kubernetes` is set: the agent does not know how to reach the cluster",
                    "add `talos: {}` on a Talos node, or `kubernetes: {kubeconfig: PATH}` for any other cluster",
                );
                ClusterAccess::Kubeconfig {
                    path: PathBuf::new(),
                }
            }
        }
    }

    fn talos(&mut self, raw: RawTalos) -> ClusterAccess {
        let socket = match &raw.socket {
            Some(s) => {
                if !Path::new(&s.value).is_absolute() {
                    self.problem(
                        "talos.socket",
                        line(s),
                        format!("`{}` is not an absolute path", s.value),
                        format!("use {DEFAULT_TALOS_SOCKET}"),
                    );
                }
                PathBuf::from(&s.value)
            }
            None => PathBuf::from(DEFAULT_TALOS_SOCKET),
        };
        ClusterAccess::Talos {
            socket,
            bootstrap_etcd: raw.bootstrap_etcd.unwrap_or(true),
        }
    }

    fn tpm(&mut self, raw: Option<RawTpm>) -> TpmConfig {
        let raw = raw.unwrap_or(RawTpm {
            device: None,
            pcrs: None,
            lock_pcr: None,
            nv_index: None,
            salt_key_name: None,
        });
        let address = match &raw.device {
            Some(d) => {
                if let Err(e) = check_tpm_address(&d.value) {
                    self.problem(
                        "tpm.device",
                        line(d),
                        e,
                        "use /dev/tpmrm0, tcp://HOST:PORT or unix:///PATH",
                    );
                }
                d.value.clone()
            }
            None => DEFAULT_TPM_DEVICE.to_string(),
        };
        let pcrs = match &raw.pcrs {
            Some(p) => {
                if p.value.is_empty() {
                    self.problem(
                        "tpm.pcrs",
                        line(p),
                        "is empty: the seed would be readable by any OS booted on this machine",
                        "use [7] (SecureBoot state)",
                    );
                }
                let mut seen = BTreeSet::new();
                for pcr in &p.value {
                    if *pcr > 23 {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            format!("{pcr} is not a PCR index"),
                            "PCRs are 0 to 23; use [7]",
                        );
                    } else if !seen.insert(*pcr) {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            format!("PCR {pcr} is listed twice"),
                            "list each PCR once",
                        );
                    } else if *pcr == 11 {
                        self.problem(
                            "tpm.pcrs",
                            line(p),
                            "PCR 11 changes at every boot phase on Talos",
                            "leave 11 out; use [7]",
                        );
                    }
                }
                p.value.clone()
            }
            None => DEFAULT_PCRS.to_vec(),
        };
        let lock_pcr = match &raw.lock_pcr {
            Some(l) => {
                let pcr = l.value;
                if pcr > 23 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("{pcr} is not a PCR index"),
                        "use 15 (unused by Talos)",
                    );
                } else if pcr == 16 || pcr == 23 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("PCR {pcr} can be reset by any process, which would undo the lock"),
                        "use 15 (unused by Talos)",
                    );
                } else if pcr == 11 {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        "PCR 11 is extended by Talos at every boot phase",
                        "use 15 (unused by Talos)",
                    );
                } else if pcrs.contains(&pcr) {
                    self.problem(
                        "tpm.lockPcr",
                        line(l),
                        format!("PCR {pcr} is also in tpm.pcrs"),
                        "the lock PCR must be a separate PCR; use 15",
                    );
                }
                pcr
            }
            None => DEFAULT_LOCK_PCR,
        };
        let nv_index = raw.nv_index.as_ref().and_then(|n| {
            let parsed = match &n.value {
                RawNumber::Int(i) => u32::try_from(*i).ok(),
                RawNumber::Text(t) => {
                    let t = t.trim();
                    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => t.parse().ok(),
                    }
                }
            };
            match parsed {
                Some(i) if (0x0100_0000..=0x01FF_FFFF).contains(&i) => Some(i),
                _ => {
                    self.problem(
                        "tpm.nvIndex",
                        line(n),
                        "is not an NV index (0x01000000 to 0x01FFFFFF)",
                        "leave it out to use the agent's default",
                    );
                    None
                }
            }
        });
        let salt_key_name = raw.salt_key_name.as_ref().map(|n| {
            let hex = n.value.trim().to_ascii_lowercase();
            // nameAlg (2 bytes) followed by a SHA-256 digest.
            if hex.len() != 68 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.problem(
                    "tpm.saltKeyName",
                    line(n),
                    "is not a TPM object name (68 hex digits: 000b followed by a SHA-256 digest)",
                    "copy the name `bootstrap-agent tpm enroll` prints, or leave it out",
                );
            }
            hex
        });
        TpmConfig {
            address,
            pcrs,
            lock_pcr,
            nv_index,
            salt_key_name,
        }
    }

    fn secrets(&mut self, raw: Vec<Spanned<RawSecret>>) -> Vec<SecretConfig> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, entry) in raw.into_iter().enumerate() {
            let at = line(&entry);
            let r = entry.value;
            let f = |name: &str| format!("secrets[{i}].{name}");
            let namespace = r
                .namespace
                .as_ref()
                .map_or(FLUX_NAMESPACE.to_string(), |s| s.value.clone());
            if let Some(ns) = &r.namespace
                && !is_dns_label(&ns.value)
            {
                self.problem(
                    f("namespace"),
                    line(ns),
                    format!("`{}` is not a valid namespace name", ns.value),
                    "use lower-case letters, digits and '-', at most 63 characters",
                );
            }
            let name = match &r.name {
                Some(n) => {
                    if !is_dns_subdomain(&n.value) {
                        self.problem(
                            f("name"),
                            line(n),
                            format!("`{}` is not a valid Secret name", n.value),
                            "use lower-case letters, digits, '-' and '.', at most 253 characters",
                        );
                    }
                    n.value.clone()
                }
                None => {
                    self.problem(
                        f("name"),
                        at,
                        "is missing",
                        "name the Kubernetes Secret, e.g. sops-age",
                    );
                    String::new()
                }
            };
            let key = match &r.key {
                Some(k) => {
                    if !is_data_key(&k.value) {
                        self.problem(
                            f("key"),
                            line(k),
                            format!("`{}` is not a valid Secret data key", k.value),
                            "use letters, digits, '-', '_' and '.'",
                        );
                    }
                    k.value.clone()
                }
                None => {
                    self.problem(
                        f("key"),
                        at,
                        "is missing",
                        "give the data key, e.g. age.agekey",
                    );
                    String::new()
                }
            };
            let format = match &r.format {
                None if key.ends_with(".agekey") => SecretFormat::AgeIdentity,
                None => SecretFormat::Raw,
                Some(s) => match s.value.as_str() {
                    "ageIdentity" => SecretFormat::AgeIdentity,
                    "raw" => SecretFormat::Raw,
                    other => {
                        self.problem(
                            f("format"),
                            line(s),
                            format!("`{other}` is not a format"),
                            "use `ageIdentity` or `raw`",
                        );
                        SecretFormat::Raw
                    }
                },
            };
            if format == SecretFormat::AgeIdentity
                && namespace == FLUX_NAMESPACE
                && !key.is_empty()
                && !key.ends_with(".agekey")
            {
                self.problem(
                    f("key"),
                    r.key.as_ref().and_then(line),
                    format!("`{key}` does not end in `.agekey`: kustomize-controller ignores it"),
                    "use `age.agekey`",
                );
            }
            let sealed = match (r.sealed, r.sealed_file) {
                (Some(s), Some(file)) => {
                    self.problem(
                        f("sealedFile"),
                        line(&file),
                        "both `sealed` and `sealedFile` are set",
                        "keep one of them",
                    );
                    Some(SealedSource::Inline(s.value))
                }
                (Some(s), None) => {
                    let text = s.value.trim();
                    if text.is_empty() {
                        None
                    } else {
                        if !text.starts_with("-----BEGIN AGE ENCRYPTED FILE-----")
                            || !text.ends_with("-----END AGE ENCRYPTED FILE-----")
                        {
                            self.problem(f("sealed"), line(&s), "is not an ASCII-armored age file", "paste the whole output of `age -a -r <recipient>`, BEGIN and END lines included");
                        }
                        Some(SealedSource::Inline(s.value))
                    }
                }
                (None, Some(file)) => Some(SealedSource::File(
                    self.non_empty_path(&f("sealedFile"), &file),
                )),
                (None, None) => None,
            };
            if !name.is_empty() && !seen.insert((namespace.clone(), name.clone())) {
                self.problem(
                    f("name"),
                    at,
                    format!("{namespace}/{name} is configured twice"),
                    "keep one entry per Secret",
                );
            }
            out.push(SecretConfig {
                namespace,
                name,
                key,
                sealed,
                format,
                overwrite: r.overwrite.unwrap_or(false),
            });
        }
        out
    }

    fn bundle(&mut self, raw: Option<RawBundle>) -> BundleConfig {
        let raw = raw.unwrap_or(RawBundle {
            dir: None,
            fetch: None,
        });
        let dir = match &raw.dir {
            Some(d) => self.non_empty_path("bundle.dir", d),
            None => PathBuf::from(DEFAULT_BUNDLE_DIR),
        };
        BundleConfig {
            dir,
            fetch: raw.fetch.unwrap_or(false),
        }
    }

    fn flux(&mut self, raw: Option<Spanned<RawFlux>>, secrets: &[SecretConfig]) -> FluxConfig {
        let Some(raw) = raw else {
            self.problem("flux", None, "is missing", "add `flux: {url: https://github.com/OWNER/REPO, branch: main, path: ./kubernetes/flux-system}`");
            return FluxConfig {
                url: String::new(),
                branch: "main".into(),
                path: "./".into(),
                interval: Duration::from_secs(60),
                kustomization_interval: Duration::from_secs(600),
                secret_ref: None,
            };
        };
        let at = line(&raw);
        let r = raw.value;
        let url = match &r.url {
            Some(u) => {
                if let Err(e) = check_git_url(&u.value) {
                    self.problem(
                        "flux.url",
                        line(u),
                        e,
                        "use https://HOST/OWNER/REPO or ssh://git@HOST/OWNER/REPO",
                    );
                }
                u.value.clone()
            }
            None => {
                self.problem(
                    "flux.url",
                    at,
                    "is missing",
                    "give the Git repository Flux syncs from",
                );
                String::new()
            }
        };
        let branch = match &r.branch {
            Some(b) => {
                if b.value.trim().is_empty()
                    || b.value.contains(char::is_whitespace)
                    || b.value.contains("..")
                {
                    self.problem(
                        "flux.branch",
                        line(b),
                        format!("`{}` is not a branch name", b.value),
                        "e.g. main",
                    );
                }
                b.value.clone()
            }
            None => "main".into(),
        };
        let path = match &r.path {
            Some(p) => {
                let v = p.value.trim();
                if v.starts_with('/') || v.split('/').any(|c| c == "..") {
                    self.problem(
                        "flux.path",
                        line(p),
                        format!("`{v}` must be relative to the repository root and stay inside it"),
                        "e.g. ./kubernetes/flux-system",
                    );
                }
                if v.starts_with("./") || v == "." {
                    v.to_string()
                } else {
                    format!("./{v}")
                }
            }
            None => "./".into(),
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
        let secret_ref = r.secret_ref.as_ref().map(|s| {
            if !is_dns_subdomain(&s.value) {
                self.problem(
                    "flux.secretRef",
                    line(s),
                    format!("`{}` is not a valid Secret name", s.value),
                    "name a Secret in flux-system",
                );
            }
            s.value.clone()
        });
        if url.starts_with("ssh://") && secret_ref.is_none() {
            self.problem(
                "flux.secretRef",
                at,
                "an ssh:// URL needs Git credentials",
                "seal a deploy key as a secret in flux-system and name it in flux.secretRef",
            );
        }
        if let Some(name) = &secret_ref
            && !secrets
                .iter()
                .any(|s| s.namespace == FLUX_NAMESPACE && &s.name == name)
        {
            tracing::debug!(secret = %name, "flux.secretRef is not seeded by the agent: it must already exist");
        }
        FluxConfig {
            url,
            branch,
            path,
            interval,
            kustomization_interval,
            secret_ref,
        }
    }

    fn deadlines(&mut self, raw: Option<RawDeadlines>) -> Deadlines {
        let d = Deadlines::default();
        let Some(r) = raw else { return d };
        Deadlines {
            talos_api: self.duration("deadlines.talosApi", r.talos_api.as_ref(), d.talos_api),
            etcd: self.duration("deadlines.etcd", r.etcd.as_ref(), d.etcd),
            kube_api: self.duration("deadlines.kubeApi", r.kube_api.as_ref(), d.kube_api),
            secrets: self.duration("deadlines.secrets", r.secrets.as_ref(), d.secrets),
            crds: self.duration("deadlines.crds", r.crds.as_ref(), d.crds),
            flux: self.duration("deadlines.flux", r.flux.as_ref(), d.flux),
            ready: self.duration("deadlines.ready", r.ready.as_ref(), d.ready),
        }
    }

    fn retry(&mut self, raw: Option<RawRetry>) -> RetryConfig {
        let d = RetryConfig::default();
        let Some(r) = raw else { return d };
        RetryConfig {
            initial: self.duration("retry.initial", r.initial.as_ref(), d.initial),
            max: self.duration("retry.max", r.max.as_ref(), d.max),
        }
    }
}

impl Deadlines {
    fn scaled(self, f: f64) -> Deadlines {
        let s = |d: Duration| d.mul_f64(f).max(Duration::from_millis(1));
        Deadlines {
            talos_api: s(self.talos_api),
            etcd: s(self.etcd),
            kube_api: s(self.kube_api),
            secrets: s(self.secrets),
            crds: s(self.crds),
            flux: s(self.flux),
            ready: s(self.ready),
        }
    }
}

/// Checks a TPM address: a device path, `tcp://HOST:PORT` or `unix:///PATH`.
pub fn check_tpm_address(addr: &str) -> Result<(), String> {
    if let Some(rest) = addr.strip_prefix("tcp://") {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{addr}` has no port"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("`{addr}` is not tcp://HOST:PORT"));
        }
        Ok(())
    } else if let Some(path) = addr.strip_prefix("unix://") {
        if path.starts_with('/') {
            Ok(())
        } else {
            Err(format!("`{addr}` is not unix:///ABSOLUTE/PATH"))
        }
    } else if addr.starts_with('/') {
        Ok(())
    } else {
        Err(format!("`{addr}` is not a TPM address"))
    }
}

fn check_git_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" | "ssh" | "http" => {}
        other => {
            return Err(format!(
                "scheme `{other}` is not supported by Flux's GitRepository"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if parsed.path().trim_matches('/').is_empty() {
        return Err(format!("`{url}` names no repository"));
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}
