//! The plan: everything a run will do, decided up front from the configuration (and the bundle),
//! without I/O. `bootstrap-agent plan` prints it; the boot driver executes it step by step.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ClusterAccess, Config, FLUX_NAMESPACE, SealedSource};
use crate::duration::format_go;

/// The boot sequence, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepId {
    /// Wait until machined answers on its local socket.
    TalosApi,
    /// Bootstrap etcd (once per cluster).
    Etcd,
    /// Obtain the admin kubeconfig from machined (in memory only).
    Kubeconfig,
    /// Wait until the Kubernetes API answers.
    KubeApi,
    /// Unseal the sealed inputs with the TPM and create their Secrets, then lock the TPM seed.
    Secrets,
    /// Apply the CRDs and Namespaces of the bundle and wait until they are Established.
    Crds,
    /// Apply Flux's components (only while Flux has never synced; Git owns them afterwards).
    Flux,
    /// Apply the GitRepository and Kustomization `flux-system`.
    Sync,
    /// Wait until Flux reports the sync Ready.
    Ready,
}

impl StepId {
    /// Every step, in execution order.
    pub const ALL: [StepId; 9] = [
        StepId::TalosApi,
        StepId::Etcd,
        StepId::Kubeconfig,
        StepId::KubeApi,
        StepId::Secrets,
        StepId::Crds,
        StepId::Flux,
        StepId::Sync,
        StepId::Ready,
    ];

    /// The name used in logs, the status file and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            StepId::TalosApi => "talos-api",
            StepId::Etcd => "etcd",
            StepId::Kubeconfig => "kubeconfig",
            StepId::KubeApi => "kube-api",
            StepId::Secrets => "secrets",
            StepId::Crds => "crds",
            StepId::Flux => "flux",
            StepId::Sync => "sync",
            StepId::Ready => "ready",
        }
    }

    /// A step whose completion survives restarts within the life of the node's `/var`: once the
    /// status file records it done, a later run does not repeat it. Every other step is re-run
    /// and must find nothing to change.
    pub fn is_durable(self) -> bool {
        matches!(self, StepId::Etcd)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub id: StepId,
    /// What the step will do, in words.
    pub action: String,
    /// Why the step will not run, when it will not.
    pub skip: Option<String>,
    /// How long the step may retry before the run fails.
    pub deadline: Duration,
}

/// Which apply stage an object belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Secrets seeded from sealed inputs.
    Secrets,
    /// Namespaces and CRDs, waited for until Established.
    Definitions,
    /// Everything else of the bundle.
    Components,
    /// GitRepository and Kustomization `flux-system`.
    Sync,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Secrets => "secrets",
            Stage::Definitions => "definitions",
            Stage::Components => "components",
            Stage::Sync => "sync",
        })
    }
}

/// An object the agent will apply.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlannedObject {
    pub stage: Stage,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// A note such as "sealed input missing" or the bundle artifact it comes from.
    pub note: String,
}

impl fmt::Display for PlannedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name)?,
            None => write!(f, "{} {}", self.kind, self.name)?,
        }
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}

/// Everything a run will do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlannedStep>,
    pub objects: Vec<PlannedObject>,
}

impl Plan {
    /// Builds the plan from a validated configuration and the objects of the bundle (the bundle
    /// module lists them; pass none when the bundle is not available offline).
    pub fn new(config: &Config, bundle_objects: Vec<PlannedObject>) -> Plan {
        let d = &config.deadlines;
        let (on_talos, bootstrap_etcd) = match &config.cluster {
            ClusterAccess::Talos { bootstrap_etcd, .. } => (true, *bootstrap_etcd),
            ClusterAccess::Kubeconfig { .. } => (false, false),
        };
        let not_talos = (!on_talos)
            .then(|| "no `talos` section: the cluster comes from a kubeconfig".to_string());
        let step = |id, action: String, skip: Option<String>, deadline| PlannedStep {
            id,
            action,
            skip,
            deadline,
        };
        let sealed = config.secrets.iter().filter(|s| s.sealed.is_some()).count();
        let mut steps = vec![
            step(
                StepId::TalosApi,
                match &config.cluster {
                    ClusterAccess::Talos { socket, .. } => {
                        format!("wait for machined on {}", socket.display())
                    }
                    ClusterAccess::Kubeconfig { .. } => "wait for machined".into(),
                },
                not_talos.clone(),
                d.talos_api,
            ),
            step(
                StepId::Etcd,
                "bootstrap etcd through the local Talos API (once per cluster)".into(),
                if !on_talos {
                    not_talos.clone()
                } else {
                    (!bootstrap_etcd).then(|| "talos.bootstrapEtcd is false".into())
                },
                d.etcd,
            ),
            step(
                StepId::Kubeconfig,
                "obtain the admin kubeconfig from machined (kept in memory)".into(),
                not_talos,
                d.kube_api,
            ),
            step(
                StepId::KubeApi,
                match &config.cluster {
                    ClusterAccess::Talos { .. } => "wait for the Kubernetes API".into(),
                    ClusterAccess::Kubeconfig { path } => {
                        format!("wait for the Kubernetes API of {}", path.display())
                    }
                },
                None,
                d.kube_api,
            ),
            step(
                StepId::Secrets,
                format!(
                    "unseal {sealed} of {} secret(s) with the TPM at {} (PCRs {:?}), create them, then extend PCR {}",
                    config.secrets.len(),
                    config.tpm.address,
                    config.tpm.policy.pcrs(),
                    config.tpm.policy.lock_pcr()
                ),
                config
                    .secrets
                    .is_empty()
                    .then(|| "no secrets configured".into()),
                d.secrets,
            ),
            step(
                StepId::Crds,
                "apply Namespaces and CRDs, wait until Established".into(),
                None,
                d.crds,
            ),
            step(
                StepId::Flux,
                "apply Flux's components unless Flux has already synced from Git".into(),
                None,
                d.flux,
            ),
            step(
                StepId::Sync,
                format!(
                    "apply GitRepository and Kustomization flux-system ({} {} {})",
                    config.flux.url, config.flux.branch, config.flux.path
                ),
                None,
                d.flux,
            ),
            step(
                StepId::Ready,
                "wait until Flux reports the sync Ready".into(),
                None,
                d.ready,
            ),
        ];
        steps.sort_by_key(|s| s.id);

        let mut objects: Vec<PlannedObject> = config
            .secrets
            .iter()
            .map(|s| PlannedObject {
                stage: Stage::Secrets,
                kind: "Secret".into(),
                namespace: Some(s.namespace.to_string()),
                name: s.name.to_string(),
                note: match &s.sealed {
                    None => format!(
                        "key {}: sealed input missing: the run will enrol and wait",
                        s.key
                    ),
                    Some(SealedSource::Inline(_)) => format!("key {}: sealed inline", s.key),
                    Some(SealedSource::File(p)) => {
                        format!("key {}: sealed in {}", s.key, p.display())
                    }
                },
            })
            .collect();
        objects.extend(bundle_objects);
        let flux = &config.flux;
        objects.push(PlannedObject {
            stage: Stage::Sync,
            kind: "GitRepository".into(),
            namespace: Some(FLUX_NAMESPACE.into()),
            name: "flux-system".into(),
            note: format!(
                "{} branch {} every {}",
                flux.url,
                flux.branch,
                format_go(flux.interval)
            ),
        });
        objects.push(PlannedObject {
            stage: Stage::Sync,
            kind: "Kustomization".into(),
            namespace: Some(FLUX_NAMESPACE.into()),
            name: "flux-system".into(),
            note: format!(
                "path {} every {}, SOPS decryption with sops-age",
                flux.path,
                format_go(flux.kustomization_interval)
            ),
        });
        objects.sort_by_key(|o| o.stage);
        Plan { steps, objects }
    }

    /// The planned step for `id`.
    pub fn step(&self, id: StepId) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Steps:")?;
        for (i, s) in self.steps.iter().enumerate() {
            match &s.skip {
                Some(why) => writeln!(f, "  {}. {:<10} skip: {why}", i + 1, s.id.name())?,
                None => writeln!(
                    f,
                    "  {}. {:<10} {} (deadline {})",
                    i + 1,
                    s.id.name(),
                    s.action,
                    format_go(s.deadline)
                )?,
            }
        }
        writeln!(f, "Objects ({}):", self.objects.len())?;
        let mut stage = None;
        for o in &self.objects {
            if stage != Some(o.stage) {
                writeln!(f, "  [{}]", o.stage)?;
                stage = Some(o.stage);
            }
            writeln!(f, "    {o}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/c/config.yaml"), &|_| None).unwrap()
    }

    #[test]
    fn talos_plan_runs_every_step_in_order() {
        let c = config(
            "talos: {}\nflux: { url: https://e.org/o/r, path: kubernetes/flux-system }\nsecrets: [ { name: sops-age, key: age.agekey } ]\n",
        );
        let plan = Plan::new(&c, vec![]);
        let ids: Vec<StepId> = plan.steps.iter().map(|s| s.id).collect();
        assert_eq!(ids, StepId::ALL.to_vec());
        assert!(plan.steps.iter().all(|s| s.skip.is_none()), "{plan}");
        let text = plan.to_string();
        assert!(
            text.contains("Secret flux-system/sops-age (key age.agekey: sealed input missing"),
            "{text}"
        );
        assert!(
            text.contains(
                "Kustomization flux-system/flux-system (path ./kubernetes/flux-system every 10m0s"
            ),
            "{text}"
        );
    }

    #[test]
    fn kubeconfig_plan_skips_the_talos_steps_and_says_why() {
        let c = config("kubernetes: { kubeconfig: kc }\nflux: { url: https://e.org/o/r }\n");
        let plan = Plan::new(&c, vec![]);
        for id in [StepId::TalosApi, StepId::Etcd, StepId::Kubeconfig] {
            assert!(
                plan.step(id)
                    .unwrap()
                    .skip
                    .as_deref()
                    .unwrap()
                    .contains("kubeconfig")
            );
        }
        assert_eq!(
            plan.step(StepId::Secrets).unwrap().skip.as_deref(),
            Some("no secrets configured")
        );
        assert!(plan.step(StepId::Ready).unwrap().skip.is_none());
    }

    #[test]
    fn etcd_bootstrap_can_be_turned_off() {
        let c = config("talos: { bootstrapEtcd: false }\nflux: { url: https://e.org/o/r }\n");
        assert_eq!(
            Plan::new(&c, vec![])
                .step(StepId::Etcd)
                .unwrap()
                .skip
                .as_deref(),
            Some("talos.bootstrapEtcd is false")
        );
    }

    #[test]
    fn bundle_objects_are_ordered_by_stage() {
        let c = config("talos: {}\nflux: { url: https://e.org/o/r }\n");
        let crd = PlannedObject {
            stage: Stage::Definitions,
            kind: "CustomResourceDefinition".into(),
            namespace: None,
            name: "certificates.cert-manager.io".into(),
            note: String::new(),
        };
        let dep = PlannedObject {
            stage: Stage::Components,
            kind: "Deployment".into(),
            namespace: Some("flux-system".into()),
            name: "source-controller".into(),
            note: String::new(),
        };
        let plan = Plan::new(&c, vec![dep.clone(), crd.clone()]);
        assert_eq!(plan.objects[0], crd);
        assert_eq!(plan.objects[1], dep);
        assert_eq!(plan.objects.last().unwrap().kind, "Kustomization");
    }
}
