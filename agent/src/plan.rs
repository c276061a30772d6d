//! The plan: everything a run will do, decided up front from the configuration (and the bundle),
//! without I/O. `bootstrap-agent plan` prints it; the boot driver executes it step by step.

use std::fmt;
use std::time::Duration;

use crate::bundle::{Bundle, Manifest};
use crate::config::{Config, FLUX_NAMESPACE, SealedSource};
use crate::duration::format_go;

pub use crate::steps::StepId;

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
        let settings = &config.steps;
        let steps = StepId::ALL
            .into_iter()
            .map(|id| PlannedStep {
                id,
                action: id.action(settings),
                skip: id.skip(settings),
                deadline: settings.deadlines.for_step(id),
            })
            .collect();
        let mut objects: Vec<PlannedObject> = settings
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
        let flux = &settings.flux;
        objects.push(PlannedObject {
            stage: Stage::Sync,
            kind: "GitRepository".into(),
            namespace: Some(FLUX_NAMESPACE.into()),
            name: "flux-system".into(),
            note: format!(
                "{} branch {} every {}",
                flux.url,
                flux.branch,
                format_go(flux.source_interval)
            ),
        });
        objects.push(PlannedObject {
            stage: Stage::Sync,
            kind: "Kustomization".into(),
            namespace: Some(FLUX_NAMESPACE.into()),
            name: "flux-system".into(),
            note: format!(
                "path {} every {} (Flux's own path: no SOPS decryption)",
                flux.path,
                format_go(flux.interval)
            ),
        });
        objects.sort_by_key(|o| o.stage);
        Plan { steps, objects }
    }

    /// The objects of a bundle, by stage, for [`Plan::new`].
    pub fn bundle_objects(bundle: &Bundle) -> Vec<PlannedObject> {
        let planned = |m: &Manifest, components: bool| PlannedObject {
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
            "talos: {}\nflux: { url: https://e.org/o/r, path: kubernetes/flux-system }\ntpm: { factor: 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff }\nsecrets: [ { name: sops-age, key: age.agekey } ]\n",
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
            text.contains("unseal") && text.contains("enrolling it if it has none"),
            "{text}"
        );
        let unseal = ids.iter().position(|s| *s == StepId::Unseal);
        let kube_api = ids.iter().position(|s| *s == StepId::KubeApi);
        assert!(
            unseal < kube_api,
            "the seed is locked before any Kubernetes step"
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
        for id in [StepId::Unseal, StepId::Secrets] {
            assert_eq!(
                plan.step(id).unwrap().skip.as_deref(),
                Some("no secrets configured")
            );
        }
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
