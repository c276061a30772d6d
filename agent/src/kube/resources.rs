//! Maps an object's apiVersion/kind to its REST resource without discovery: a table of the
//! built-in kinds the bundle uses, plus the bundle's own CRDs. Anything else is discovered
//! with one request.

use std::collections::BTreeMap;

use crate::bundle::CrdNames;
use kube::api::ApiResource;
use kube::core::GroupVersionKind;

use super::KubeError;

/// Resource plus whether it is namespaced.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub resource: ApiResource,
    pub namespaced: bool,
}

const BUILTINS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Namespace", "namespaces", false),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    ("", "v1", "ResourceQuota", "resourcequotas", true),
    ("", "v1", "LimitRange", "limitranges", true),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        true,
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    // Flux's sync kinds, so the sync objects map even when Git owns Flux's CRDs.
    (
        "source.toolkit.fluxcd.io",
        "v1",
        "GitRepository",
        "gitrepositories",
        true,
    ),
    (
        "kustomize.toolkit.fluxcd.io",
        "v1",
        "Kustomization",
        "kustomizations",
        true,
    ),
];

#[derive(Clone, Debug, Default)]
pub struct Registry {
    known: BTreeMap<(String, String), Mapping>,
}

fn key(api_version: &str, kind: &str) -> (String, String) {
    (api_version.to_string(), kind.to_string())
}

impl Registry {
    pub fn new() -> Registry {
        let mut r = Registry::default();
        for (g, v, k, p, n) in BUILTINS {
            let gvk = GroupVersionKind::gvk(g, v, k);
            r.known.insert(
                key(&gvk.api_version(), k),
                Mapping {
                    resource: ApiResource::from_gvk_with_plural(&gvk, p),
                    namespaced: *n,
                },
            );
        }
        r
    }

    /// Adds every version of a CRD.
    pub fn add_crd(&mut self, crd: &CrdNames) {
        for version in &crd.versions {
            let gvk = GroupVersionKind::gvk(&crd.group, version, &crd.kind);
            self.known.insert(
                key(&gvk.api_version(), &crd.kind),
                Mapping {
                    resource: ApiResource::from_gvk_with_plural(&gvk, &crd.plural),
                    namespaced: crd.namespaced,
                },
            );
        }
    }

    pub fn lookup(&self, api_version: &str, kind: &str) -> Option<Mapping> {
        self.known.get(&key(api_version, kind)).cloned()
    }

    /// Looks up the mapping, asking the API server (one discovery request) for unknown kinds.
    pub async fn resolve(
        &self,
        client: &kube::Client,
        api_version: &str,
        kind: &str,
    ) -> Result<Mapping, KubeError> {
        if let Some(m) = self.lookup(api_version, kind) {
            return Ok(m);
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|e| KubeError::from_kube(&format!("discover {api_version} {kind}"), e))?;
        Ok(Mapping {
            resource,
            namespaced: caps.scope == kube::discovery::Scope::Namespaced,
        })
    }
}
