"""Each check fails on a broken copy of the tree, naming the file, the object and the problem."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import homelab_check as hc
import versions

CONTROLLERS = "kubernetes/infrastructure/controllers"
CERTS = "kubernetes/infrastructure/certificates"
LAYERS = "kubernetes/flux-system/layers.yaml"
GATEWAY = "kubernetes/infrastructure/configs/gateway.yaml"
ROUTE = "kubernetes/apps/whoami/httproute.yaml"
TOKEN = f"{CERTS}/digitalocean-token.enc.yaml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def findings(repo: Path, fixtures: Path) -> list[str]:
    return [str(f) for f in hc.check_all(repo, fixtures).findings]


def assert_found(found: list[str], *parts: str) -> None:
    assert any(all(p in f for p in parts) for f in found), f"no finding with {parts} in:\n" + "\n".join(found)


def layer_block(text: str, name: str) -> tuple[int, int]:
    """Start and end offsets of the Kustomization document `name` in layers.yaml."""
    start = text.index(f"  name: {name}\n")
    start = text.rindex("apiVersion:", 0, start)
    end = text.find("\n---", start)
    return start, (len(text) if end < 0 else end)


def edit_layer(repo: Path, name: str, old: str, new: str) -> None:
    path = repo / LAYERS
    text = path.read_text()
    start, end = layer_block(text, name)
    block = text[start:end]
    assert old in block, f"{old!r} not in layer {name}"
    path.write_text(text[:start] + block.replace(old, new, 1) + text[end:])


# ---------------------------------------------------------------- references


def test_route_to_a_gateway_that_does_not_exist(copy, fixtures):
    edit(copy / ROUTE, "    - name: traefik-gateway\n", "    - name: traefik-gw\n")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "parentRef Gateway traefik/traefik-gw does not exist", "traefik/traefik-gateway")


def test_route_to_a_listener_that_does_not_exist(copy, fixtures):
    edit(copy / ROUTE, "sectionName: websecure\n", "sectionName: https\n")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "has no listener 'https'", "websecure-apex")


def test_route_hostname_no_listener_serves(copy, fixtures):
    edit(copy / ROUTE, "    - whoami.${SITE_DOMAIN}\n", "    - whoami.example.org\n")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "whoami.example.org match no hostname", "*.catinthehack.ca")


def test_route_from_a_namespace_the_listener_does_not_admit(copy, fixtures):
    gateway = copy / GATEWAY
    text = gateway.read_text()
    start = text.index("    - name: websecure\n")
    end = text.index("    - name: websecure-apex\n")
    gateway.write_text(text[:start] + text[start:end].replace("from: All", "from: Same") + text[end:])
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "admits routes from namespace whoami")


def test_route_backend_port_that_does_not_exist(copy, fixtures):
    edit(copy / ROUTE, "          port: 80\n", "          port: 8080\n")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "backendRef Service whoami/whoami has no port 8080")


def test_certificate_secret_the_gateway_does_not_reference(copy, fixtures):
    edit(copy / f"{CERTS}/certificate.yaml", "secretName: wildcard-tls\n", "secretName: wildcard-cert\n")
    found = findings(copy, fixtures)
    assert_found(found, f"{CERTS}/certificate.yaml", "Certificate traefik/wildcard", "secretName wildcard-cert is used by no Gateway listener", "traefik/wildcard-tls")
    assert_found(found, GATEWAY, "Gateway traefik/traefik-gateway listener websecure", "Secret traefik/wildcard-tls is produced by no Certificate")


def test_apex_covered_by_the_certificate_but_served_by_no_listener(copy, fixtures):
    gateway = copy / GATEWAY
    text = gateway.read_text()
    gateway.write_text(text[: text.index("    - name: websecure-apex\n")])
    assert_found(findings(copy, fixtures), f"{CERTS}/certificate.yaml", "Certificate traefik/wildcard", "covers catinthehack.ca but no HTTPS listener")


def test_listener_hostname_the_certificate_does_not_cover(copy, fixtures):
    edit(copy / GATEWAY, 'hostname: "${SITE_DOMAIN}"\n', 'hostname: "www.example.org"\n')
    assert_found(findings(copy, fixtures), GATEWAY, "listener websecure-apex", "hostname www.example.org is not covered by Certificate traefik/wildcard")


def test_listener_port_that_is_no_traefik_entrypoint(copy, fixtures):
    edit(copy / GATEWAY, "      port: 8443\n", "      port: 443\n")
    assert_found(findings(copy, fixtures), GATEWAY, "Gateway traefik/traefik-gateway listener websecure", "port 443 (HTTPS) matches no Traefik entrypoint", "8443")


def test_gateway_class_nothing_serves(copy, fixtures):
    edit(copy / GATEWAY, "controllerName: traefik.io/gateway-controller\n", "controllerName: example.com/gateway\n")
    assert_found(findings(copy, fixtures), GATEWAY, "GatewayClass traefik", "'example.com/gateway' is served by no controller")


def test_issuer_that_does_not_exist(copy, fixtures):
    edit(copy / f"{CERTS}/certificate.yaml", "    name: letsencrypt\n", "    name: letsencrypt-prod\n")
    assert_found(findings(copy, fixtures), f"{CERTS}/certificate.yaml", "Certificate traefik/wildcard", "issuerRef ClusterIssuer letsencrypt-prod does not exist", "letsencrypt")


def test_secret_key_the_encrypted_secret_does_not_have(copy, fixtures):
    edit(copy / f"{CERTS}/cluster-issuer.yaml", "key: access-token\n", "key: token\n")
    assert_found(
        findings(copy, fixtures),
        f"{CERTS}/cluster-issuer.yaml",
        "ClusterIssuer letsencrypt",
        "tokenSecretRef names key 'token' of Secret cert-manager/digitalocean-token",
        "access-token",
    )


def test_values_from_a_secret_that_does_not_exist(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml", "  values:\n", "  valuesFrom:\n    - kind: Secret\n      name: kyverno-values\n  values:\n")
    assert_found(findings(copy, fixtures), f"{CONTROLLERS}/kyverno/helmrelease.yaml", "HelmRelease kyverno/kyverno", "valuesFrom[0] Secret kyverno/kyverno-values does not exist")


def test_values_from_a_key_the_encrypted_secret_does_not_have(copy, fixtures):
    # valuesKey defaults to values.yaml; the DNS-01 token Secret holds only access-token.
    edit(copy / f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "  values:\n", "  valuesFrom:\n    - kind: Secret\n      name: digitalocean-token\n  values:\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/cert-manager/helmrelease.yaml",
        "HelmRelease cert-manager/cert-manager",
        "valuesFrom[0] Secret cert-manager/digitalocean-token has no key values.yaml (keys: access-token)",
    )


def test_decryption_with_a_secret_that_does_not_exist(copy, fixtures):
    edit_layer(copy, "certificates", "      name: sops-age\n", "      name: sops-key\n")
    assert_found(
        findings(copy, fixtures),
        LAYERS,
        "Kustomization flux-system/certificates",
        "spec.decryption.secretRef flux-system/sops-key is neither in the tree nor created by the bootstrap agent",
    )


def test_source_credentials_that_do_not_exist(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/helm-repositories.yaml", "  url: https://kyverno.github.io/kyverno\n", "  url: https://kyverno.github.io/kyverno\n  secretRef:\n    name: kyverno-auth\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/helm-repositories.yaml",
        "HelmRepository flux-system/kyverno",
        "spec.secretRef Secret flux-system/kyverno-auth does not exist in the tree",
    )


def test_chart_ref_to_a_source_that_does_not_exist(copy, fixtures):
    path = copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml"
    text = path.read_text()
    start, end = text.index("  chart:\n"), text.index("  install:\n")
    path.write_text(text[:start] + "  chartRef:\n    kind: OCIRepository\n    name: kyverno\n    namespace: flux-system\n" + text[end:])
    assert_found(findings(copy, fixtures), f"{CONTROLLERS}/kyverno/helmrelease.yaml", "HelmRelease kyverno/kyverno", "chartRef OCIRepository flux-system/kyverno does not exist in the tree")


def test_kustomization_source_that_does_not_exist(copy, fixtures):
    edit_layer(copy, "apps", "    name: flux-system\n", "    name: flux-sytem\n")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/apps", "sourceRef GitRepository flux-system/flux-sytem does not exist in the tree")


def test_gateway_of_a_class_that_does_not_exist(copy, fixtures):
    edit(copy / GATEWAY, "gatewayClassName: traefik\n", "gatewayClassName: traefk\n")
    assert_found(findings(copy, fixtures), GATEWAY, "Gateway traefik/traefik-gateway", "gatewayClassName 'traefk' names no GatewayClass in the tree (GatewayClasses: traefik)")


def test_route_backend_that_does_not_exist(copy, fixtures):
    edit(copy / ROUTE, "        - name: whoami\n", "        - name: whoami-v2\n")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "backendRef Service whoami/whoami-v2 does not exist in the tree")


GRANT = """apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: gateway-certificates
  namespace: cert-manager
spec:
  from:
    - group: gateway.networking.k8s.io
      kind: Gateway
      namespace: traefik
  to:
    - group: ""
      kind: Secret
"""


def test_certificate_in_another_namespace_without_a_reference_grant(copy, fixtures):
    # The wildcard Certificate and its Secret move to cert-manager; the Gateway in traefik
    # refers to it across namespaces.
    edit(copy / f"{CERTS}/certificate.yaml", "  namespace: traefik\n", "  namespace: cert-manager\n")
    edit(copy / GATEWAY, "          - kind: Secret\n            name: wildcard-tls\n", "          - kind: Secret\n            name: wildcard-tls\n            namespace: cert-manager\n")
    message = "Gateway traefik/traefik-gateway listener websecure: certificateRef Secret cert-manager/wildcard-tls is in another namespace and no ReferenceGrant there allows it"
    assert_found(findings(copy, fixtures), GATEWAY, message)
    # A ReferenceGrant in the Secret's namespace allows it: the finding goes away.
    (copy / f"{CERTS}/reference-grant.yaml").write_text(GRANT)
    edit(copy / f"{CERTS}/kustomization.yaml", "  - certificate.yaml\n", "  - certificate.yaml\n  - reference-grant.yaml\n")
    assert not any(message in f for f in findings(copy, fixtures))


def test_depends_on_cycle(copy, fixtures):
    edit_layer(copy, "infra-controllers", "    - name: gateway-api\n", "    - name: gateway-api\n    - name: apps\n")
    assert_found(findings(copy, fixtures), LAYERS, "dependsOn cycle", "flux-system/apps", "flux-system/infra-controllers")


def test_depends_on_missing_object(copy, fixtures):
    edit_layer(copy, "apps", "    - name: infra-configs\n", "    - name: infra-config\n")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/apps: dependsOn flux-system/infra-config, which does not exist")


def test_missing_source_and_path(copy, fixtures):
    edit_layer(copy, "apps", "  path: ./kubernetes/apps\n", "  path: ./kubernetes/aps\n")
    edit(copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml", "        name: kyverno\n", "        name: kyvern\n")
    found = findings(copy, fixtures)
    assert_found(found, LAYERS, "Kustomization flux-system/apps", "path ./kubernetes/aps does not exist")
    assert_found(found, f"{CONTROLLERS}/kyverno/helmrelease.yaml", "HelmRelease kyverno/kyverno", "HelmRepository flux-system/kyvern does not exist")


def test_variable_no_layer_defines(copy, fixtures):
    edit(copy / ROUTE, "${SITE_DOMAIN}", "${SITE_DOMIAN}")
    assert_found(findings(copy, fixtures), ROUTE, "HTTPRoute whoami/whoami", "${SITE_DOMIAN} is not defined by the postBuild of Kustomization flux-system/apps", "SITE_DOMAIN")


def test_variable_in_a_layer_without_substitution(copy, fixtures):
    edit(copy / "kubernetes/cluster-policies/verify-flux-image-signatures.yaml", "title: Verify Flux image signatures", "title: Flux images of ${SITE_DOMAIN}")
    assert_found(
        findings(copy, fixtures),
        "kubernetes/cluster-policies/verify-flux-image-signatures.yaml",
        "ImageValidatingPolicy verify-flux-image-signatures",
        "${SITE_DOMAIN} is never substituted",
    )


def test_substitute_from_a_config_map_that_does_not_exist(copy, fixtures):
    edit_layer(copy, "apps", "        name: cluster-settings\n", "        name: cluster-setting\n")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/apps", "substituteFrom ConfigMap flux-system/cluster-setting does not exist")


# ---------------------------------------------------------------- ordering and ownership


def test_policy_in_the_layer_that_installs_its_crd(copy, fixtures):
    policy = copy / "kubernetes/cluster-policies/verify-flux-image-signatures.yaml"
    (copy / f"{CONTROLLERS}/kyverno/policy.yaml").write_text(policy.read_text())
    policy.unlink()
    edit(copy / "kubernetes/cluster-policies/kustomization.yaml", "resources:\n  - verify-flux-image-signatures.yaml\n", "resources: []\n")
    edit(copy / f"{CONTROLLERS}/kyverno/kustomization.yaml", "  - helmrelease.yaml\n", "  - helmrelease.yaml\n  - policy.yaml\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/kyverno/policy.yaml",
        "ImageValidatingPolicy verify-flux-image-signatures",
        "layer flux-system/infra-controllers",
        "installed by the same layer",
        "no matches for kind ImageValidatingPolicy",
    )


def test_route_in_a_layer_that_does_not_wait_for_the_gateway_api_crds(copy, fixtures):
    edit_layer(copy, "apps", "  dependsOn:\n    - name: infra-configs\n", "")
    assert_found(
        findings(copy, fixtures),
        ROUTE,
        "HTTPRoute whoami/whoami",
        "installed by layer flux-system/gateway-api, which flux-system/apps does not depend on",
    )


def test_certificate_in_a_layer_that_does_not_wait_for_cert_manager(copy, fixtures):
    edit_layer(copy, "certificates", "  dependsOn:\n    - name: infra-controllers\n", "")
    assert_found(findings(copy, fixtures), f"{CERTS}/certificate.yaml", "Certificate traefik/wildcard", "installed by layer flux-system/infra-controllers")


def test_namespace_owned_by_two_layers(copy, fixtures):
    (copy / "kubernetes/infrastructure/configs/namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: traefik\n")
    edit(copy / "kubernetes/infrastructure/configs/kustomization.yaml", "  - gateway.yaml\n", "  - namespace.yaml\n  - gateway.yaml\n")
    assert_found(findings(copy, fixtures), "Namespace traefik is applied by 2 Flux Kustomizations", "flux-system/infra-configs", "flux-system/infra-controllers")


def test_gateway_rendered_by_the_chart_and_defined_in_the_tree(copy, fixtures):
    path = copy / f"{CONTROLLERS}/traefik/helmrelease.yaml"
    edit(path, "    gatewayClass:\n      enabled: false\n", "    gatewayClass:\n      enabled: true\n")
    assert_found(findings(copy, fixtures), "GatewayClass traefik is applied by 2 Flux Kustomizations", "rendered by chart traefik", GATEWAY)


# ---------------------------------------------------------------- values and schemas


def test_typo_in_chart_values(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/traefik/helmrelease.yaml", "      kubernetesGateway:\n", "      kubernetesGatway:\n        enabled: true\n      kubernetesGateway:\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/traefik/helmrelease.yaml",
        "HelmRelease traefik/traefik",
        "'kubernetesGatway' was unexpected",
        "chart traefik 41.3.0 values.schema.json",
    )


def test_wrong_type_in_chart_values(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "      enabled: true\n", "      enabled: \"yes\"\n")
    assert_found(findings(copy, fixtures), f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "HelmRelease cert-manager/cert-manager", "is not of type 'boolean'", "cert-manager v1.21.1")


def test_unknown_key_in_a_chart_without_schema(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/nfs-provisioner/helmrelease.yaml", "      archiveOnDelete: true\n", "      archiveOnDelete: true\n      archiveOnDeletion: true\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/nfs-provisioner/helmrelease.yaml",
        "HelmRelease nfs-provisioner/nfs-subdir-external-provisioner",
        "storageClass.archiveOnDeletion: the chart has no such value",
        "archiveOnDelete",
    )


def test_chart_version_without_a_values_fixture(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/traefik/helmrelease.yaml", "version: 41.3.0\n", "version: 41.4.0\n")
    found = findings(copy, fixtures)
    assert_found(found, f"{CONTROLLERS}/traefik/helmrelease.yaml", "HelmRelease traefik/traefik", "pinned at 41.4.0", "traefik-41.3.0.values.schema.json")
    assert_found(found, f"{CONTROLLERS}/traefik/helmrelease.yaml", "compatibility facts of chart 41.3.0")


def test_cel_rule_of_the_helmrelease_crd(copy, fixtures):
    path = copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml"
    text = path.read_text()
    start = text.index("  upgrade:\n")
    path.write_text(text[:start] + text[start:].replace("      name: RetryOnFailure\n", "      name: RemediateOnFailure\n      retryInterval: 1m\n", 1))
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/kyverno/helmrelease.yaml",
        "HelmRelease kyverno/kyverno",
        ".spec.upgrade.strategy: .retryInterval can only be set when .name is 'RetryOnFailure'",
        "CEL validation rule",
    )


def test_cel_rule_of_the_gateway_crd(copy, fixtures):
    edit(copy / GATEWAY, "    - name: websecure-apex\n", "    - name: websecure\n")
    assert_found(findings(copy, fixtures), GATEWAY, "Gateway traefik/traefik-gateway", ".spec.listeners: Listener name must be unique within the Gateway", "gateway-api.standard.crds.yaml")


def test_unknown_field_in_the_kyverno_policy(copy, fixtures):
    edit(copy / "kubernetes/cluster-policies/verify-flux-image-signatures.yaml", "  failurePolicy: Ignore\n", "  failurePolicy: Ignore\n  failureAction: Audit\n")
    assert_found(
        findings(copy, fixtures),
        "kubernetes/cluster-policies/verify-flux-image-signatures.yaml",
        "ImageValidatingPolicy verify-flux-image-signatures",
        "'failureAction' was unexpected",
        "kyverno-v1.19.0.policies.kyverno.io_imagevalidatingpolicies.yaml",
    )


def test_unknown_field_in_a_kubernetes_kind(copy, fixtures):
    edit(copy / "kubernetes/apps/whoami/deployment.yaml", "  replicas: 1\n", "  replicas: 1\n  replica: 2\n")
    assert_found(findings(copy, fixtures), "kubernetes/apps/whoami/deployment.yaml", "Deployment whoami/whoami", "'replica' was unexpected")


def test_unknown_field_in_a_custom_resource(copy, fixtures):
    edit(copy / f"{CERTS}/certificate.yaml", "  dnsNames:\n", "  dnsName: x\n  dnsNames:\n")
    assert_found(findings(copy, fixtures), f"{CERTS}/certificate.yaml", "Certificate traefik/wildcard", "'dnsName' was unexpected", "CRD schema")


def test_wrong_type_in_a_flux_object(copy, fixtures):
    edit_layer(copy, "infra-controllers", "  prune: true\n", "  prune: yes-please\n")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/infra-controllers", "is not of type 'boolean'")


def test_unknown_crd_kind_in_a_known_group(copy, fixtures):
    edit(copy / f"{CERTS}/certificate.yaml", "kind: Certificate\n", "kind: Certifcate\n")
    assert_found(findings(copy, fixtures), f"{CERTS}/certificate.yaml", "unknown kind Certifcate in cert-manager.io/v1")


def test_kind_without_any_schema(copy, fixtures):
    (copy / "kubernetes/apps/whoami/widget.yaml").write_text("apiVersion: widgets.example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: whoami\nspec: {}\n")
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - widget.yaml\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/widget.yaml", "unknown kind widgets.example.com/v1 Widget", "CHARTED_KINDS")
    assert_found(found, "kubernetes/apps/whoami/widget.yaml", "Widget whoami/w", "no layer of the tree installs its CRD")


def test_kustomize_build_failure(copy, fixtures):
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - missing.yaml\n")
    assert_found(findings(copy, fixtures), "kubernetes/apps/kustomization.yaml", "kustomize build failed", "missing.yaml")


# ---------------------------------------------------------------- versions


def test_cert_manager_bumped_in_one_place(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "version: v1.21.1\n", "version: v1.21.2\n")
    found = findings(copy, fixtures)
    assert_found(found, f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "cert-manager is pinned at different versions", "v1.21.2", "bundle lock cert-manager-crds version = v1.21.1")
    assert_found(found, f"{CONTROLLERS}/cert-manager/helmrelease.yaml", "pins chart v1.21.2 but the cert-manager CRD fixtures are v1.21.1")


def test_gateway_api_bumped_in_one_place(copy, fixtures):
    edit(copy / "kubernetes/flux-system/gateway-api.yaml", "tag=v1.6.1", "tag=v1.7.0")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/gateway-api.yaml", "Gateway API is pinned at different versions", "v1.7.0", "bundle lock gateway-api-crds version = v1.6.1")
    assert_found(found, "kubernetes/flux-system/gateway-api.yaml", "pinned at v1.7.0 but the CRD fixtures are v1.6.1")


def test_flux_bumped_in_git_but_not_in_the_bundle(copy, fixtures):
    edit(copy / "kubernetes/flux-system/flux-components.yaml", "    tag: v2.9.4\n", "    tag: v2.10.0\n")
    found = findings(copy, fixtures)
    assert_found(
        found,
        "kubernetes/flux-system/flux-components.yaml",
        "Flux is pinned at different versions",
        "OCIRepository flux-components tag = v2.10.0",
        "bundle lock flux-components version = v2.9.4",
    )


def test_the_agent_installs_another_flux_than_git(copy, fixtures):
    edit(copy / "agent/bundle/bundle.lock.yaml", "    oci: ghcr.io/fluxcd/flux-manifests\n", "    oci: ghcr.io/example/flux-manifests\n")
    assert_found(
        findings(copy, fixtures),
        "agent/bundle/bundle.lock.yaml",
        "bundle lock flux-components is 'ghcr.io/example/flux-manifests'",
        "applies ghcr.io/fluxcd/flux-manifests",
    )


def test_flux_pinned_at_another_digest_than_the_bundle(copy, fixtures):
    git = "sha256:" + "1" * 64
    lock = "sha256:" + "2" * 64
    edit(copy / "kubernetes/flux-system/flux-components.yaml", "    tag: v2.9.4\n", f"    tag: v2.9.4\n    digest: {git}\n")
    edit(copy / "agent/bundle/bundle.lock.yaml", "    oci: ghcr.io/fluxcd/flux-manifests\n", f"    oci: ghcr.io/fluxcd/flux-manifests\n    digest: {lock}\n")
    assert_found(findings(copy, fixtures), "agent/bundle/bundle.lock.yaml", "Flux is pinned at different digests", git, lock, "bundle refresh")


def test_the_bundle_lock_pins_a_flux_digest_git_does_not(copy, fixtures):
    lock = "sha256:" + "2" * 64
    edit(copy / "agent/bundle/bundle.lock.yaml", "    oci: ghcr.io/fluxcd/flux-manifests\n", f"    oci: ghcr.io/fluxcd/flux-manifests\n    digest: {lock}\n")
    assert_found(
        findings(copy, fixtures),
        "kubernetes/flux-system/flux-components.yaml",
        "OCIRepository flux-system/flux-components",
        f"the bundle lock pins flux-components at {lock}",
        "ref.digest is unset",
    )


def test_git_pins_a_flux_digest_the_bundle_lock_does_not(copy, fixtures):
    git = "sha256:" + "1" * 64
    edit(copy / "kubernetes/flux-system/flux-components.yaml", "    tag: v2.9.4\n", f"    tag: v2.9.4\n    digest: {git}\n")
    assert_found(findings(copy, fixtures), "agent/bundle/bundle.lock.yaml", f"Git pins flux-manifests at {git}", "the bundle lock has no digest")


def test_readme_names_another_version(copy, fixtures):
    append(copy / "README.md", "\nThe cluster runs cert-manager v1.20.0.\n")
    found = findings(copy, fixtures)
    line = len((copy / "README.md").read_text().splitlines())
    assert_found(found, f"README.md:{line}", "README says cert-manager v1.20.0, the tree pins v1.21.1")


def test_readme_names_another_talos_and_kubernetes(copy, fixtures):
    edit(copy / "README.md", "Talos (**v1.13.9**)", "Talos (**v1.13.8**)")
    edit(copy / "README.md", "Kubernetes\n(v1.36.3", "Kubernetes\n(v1.36.2")
    edit(copy / "README.md", "installer-secureboot:v1.13.9-bootstrap-agent.0.1.0", "installer-secureboot:v1.13.8-bootstrap-agent.0.1.0")
    found = findings(copy, fixtures)
    assert_found(found, "README.md:", "README says Talos v1.13.8, the tree pins v1.13.9 (image-factory/versions.yaml)")
    assert_found(found, "README.md:", "README says Kubernetes v1.36.2, the tree pins v1.36.3 (image-factory/versions.yaml)")
    assert_found(found, "README.md:", "README says installer tag v1.13.8-bootstrap-agent.0.1.0", "v1.13.9-bootstrap-agent.0.1.0")


def test_readme_names_another_traefik_and_kyverno(copy, fixtures):
    append(copy / "README.md", "\nTraefik v3.6.0 (Traefik chart 41.2.0) and Kyverno v1.18.0 (Kyverno chart 3.8.0).\n")
    found = findings(copy, fixtures)
    line = len((copy / "README.md").read_text().splitlines())
    where = f"README.md:{line}"
    assert_found(found, where, "README says Traefik v3.6.0, the tree pins v3.7.11 (chart 41.3.0")
    assert_found(found, where, "README says Traefik chart 41.2.0, the tree pins chart 41.3.0")
    assert_found(found, where, "README says Kyverno v1.18.0, the tree pins v1.19.0 (chart 3.9.0")
    assert_found(found, where, "README says Kyverno chart 3.8.0, the tree pins chart 3.9.0")


def test_readme_release_lines_are_not_pins(copy, fixtures):
    """`Talos 1.12+` or `Kyverno 1.18 was …` speak of a release line, not the pin."""
    append(copy / "README.md", "\nTalos 1.12+ embeds the configuration; Kyverno 1.18 was slower; Traefik chart releases are weekly.\n")
    line = len((copy / "README.md").read_text().splitlines())
    assert not any(f"README.md:{line}" in f for f in findings(copy, fixtures))


def test_kyverno_on_a_kubernetes_version_it_is_not_tested_on(copy, fixtures):
    edit(copy / "image-factory/versions.yaml", "kubernetes: v1.36.3\n", "kubernetes: v1.38.0\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/kyverno/helmrelease.yaml",
        "Kyverno v1.19.0 is tested on Kubernetes 1.33 to 1.35, the cluster runs 1.38",
    )


def test_talos_whose_default_kubernetes_is_not_written_down(copy, fixtures):
    edit(copy / "image-factory/versions.yaml", "talos: v1.13.9\n", "talos: v1.15.0\n")
    edit(copy / "image-factory/versions.yaml", "kubernetes: v1.36.3\n", "")
    assert_found(
        findings(copy, fixtures),
        "image-factory/versions.yaml",
        "Talos v1.15.0: its default Kubernetes version is not written down in tests/homelab/compatibility.yaml (talos_default_kubernetes)",
    )


def test_kyverno_bumped_without_re_reading_its_facts(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml", "      version: 3.9.0\n", "      version: 3.10.0\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/kyverno/helmrelease.yaml",
        "HelmRelease kyverno pins chart 3.10.0 but tests/homelab/compatibility.yaml holds the facts of chart 3.9.0",
    )


def test_traefik_reads_a_gateway_api_version_the_crds_do_not_serve(copy, fixtures, tmp_path, monkeypatch):
    facts = versions.COMPATIBILITY.read_text().replace("    TLSRoute: v1\n", "    TLSRoute: v1alpha2\n")
    (tmp_path / "compatibility.yaml").write_text(facts)
    monkeypatch.setattr(versions, "COMPATIBILITY", tmp_path / "compatibility.yaml")
    assert_found(findings(copy, fixtures), "kubernetes/flux-system/gateway-api.yaml", "Gateway API v1.6.1 does not serve TLSRoute v1alpha2, which Traefik v3.7.11 reads")


# ---------------------------------------------------------------- decryption


def test_encrypted_files_need_decryption(copy, fixtures):
    edit_layer(copy, "certificates", "  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n", "")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/certificates", "holds SOPS-encrypted files", TOKEN)


def test_flux_system_must_not_decrypt(copy, fixtures):
    append(copy / "kubernetes/flux-system/gotk-sync.yaml", "  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n")
    assert_found(findings(copy, fixtures), "kubernetes/flux-system/gotk-sync.yaml", "Kustomization flux-system/flux-system: spec.decryption is set", "until flux-system/sops-age exists")


def test_decryption_in_a_layer_without_encrypted_files(copy, fixtures):
    edit_layer(copy, "apps", "  postBuild:\n", "  decryption:\n    provider: sops\n    secretRef:\n      name: sops-age\n  postBuild:\n")
    assert_found(findings(copy, fixtures), LAYERS, "Kustomization flux-system/apps: spec.decryption is set but path ./kubernetes/apps holds no encrypted file")


# ---------------------------------------------------------------- conventions


def test_helmrelease_that_stalls_after_its_retries(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/kyverno/helmrelease.yaml", "  install:\n    strategy:\n      name: RetryOnFailure\n", "  install:\n    remediation:\n      retries: 3\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/kyverno/helmrelease.yaml",
        "HelmRelease kyverno/kyverno: spec.install.strategy.name is unset",
        "retries 3 stops after 3 failures",
    )


def test_kyverno_policy_that_can_block_the_cluster(copy, fixtures):
    path = copy / "kubernetes/cluster-policies/verify-flux-image-signatures.yaml"
    edit(path, "    - Audit\n", "    - Deny\n")
    edit(path, "failurePolicy: Ignore\n", "failurePolicy: Fail\n")
    edit(path, "    background:\n      enabled: true\n", "    background:\n      enabled: false\n")
    found = findings(copy, fixtures)
    where = "kubernetes/cluster-policies/verify-flux-image-signatures.yaml"
    assert_found(found, where, "ImageValidatingPolicy verify-flux-image-signatures: validationActions ['Deny']")
    assert_found(found, where, "ImageValidatingPolicy verify-flux-image-signatures: failurePolicy Fail")
    assert_found(found, where, "ImageValidatingPolicy verify-flux-image-signatures: background scanning is off")


def test_deprecated_cluster_policy(copy, fixtures):
    (copy / "kubernetes/cluster-policies/legacy.yaml").write_text(
        "apiVersion: kyverno.io/v1\nkind: ClusterPolicy\nmetadata:\n  name: legacy\nspec:\n  rules:\n"
        "    - name: r\n      match:\n        any:\n          - resources:\n              kinds: [Pod]\n"
        "      validate:\n        message: m\n        pattern:\n          metadata:\n            name: '?*'\n"
    )
    edit(copy / "kubernetes/cluster-policies/kustomization.yaml", "  - verify-flux-image-signatures.yaml\n", "  - verify-flux-image-signatures.yaml\n  - legacy.yaml\n")
    assert_found(findings(copy, fixtures), "kubernetes/cluster-policies/legacy.yaml", "ClusterPolicy legacy: kyverno.io/v1 ClusterPolicy is deprecated")


def test_archive_on_delete_with_a_reclaim_policy_that_never_deletes(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/nfs-provisioner/helmrelease.yaml", "reclaimPolicy: Delete\n", "reclaimPolicy: Retain\n")
    assert_found(
        findings(copy, fixtures),
        f"{CONTROLLERS}/nfs-provisioner/helmrelease.yaml",
        "HelmRelease nfs-provisioner/nfs-subdir-external-provisioner: storageClass.archiveOnDelete: True has no effect with reclaimPolicy Retain",
    )


def test_sync_interval_not_written_as_flux_writes_it(copy, fixtures):
    edit(copy / "kubernetes/flux-system/gotk-sync.yaml", "interval: 1m0s\n", "interval: 1m\n")
    assert_found(findings(copy, fixtures), "kubernetes/flux-system/gotk-sync.yaml", "GitRepository flux-system/flux-system: interval '1m' is written '1m0s'")


# ---------------------------------------------------------------- secrets


def test_plaintext_secret(copy, fixtures):
    (copy / "kubernetes/apps/whoami/secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: whoami\nstringData:\n  password: hunter2\n"
    )
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - secret.yaml\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/secret.yaml", "Secret whoami/creds is not SOPS-encrypted")
    assert_found(found, "kubernetes/apps/whoami/secret.yaml", "outside a *.enc.yaml file")


def test_encrypted_secret_with_a_plaintext_value(copy, fixtures):
    path = copy / TOKEN
    text = path.read_text()
    start = text.index("access-token: ENC[")
    end = text.index("\n", start)
    path.write_text(text[:start] + "access-token: plain-value" + text[end:])
    assert_found(findings(copy, fixtures), TOKEN, "Secret cert-manager/digitalocean-token", "stringData.access-token is in plain text")


def _other_recipient(tmp_path: Path) -> str:
    key = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()


def test_encrypted_file_for_other_recipients_than_sops_yaml(copy, fixtures, tmp_path):
    text = (copy / ".sops.yaml").read_text()
    first = text.index("    age: ")
    end = text.index("\n", first)
    (copy / ".sops.yaml").write_text(text[:first] + f"    age: {_other_recipient(tmp_path)}" + text[end:])
    assert_found(findings(copy, fixtures), TOKEN, "Secret cert-manager/digitalocean-token", "encrypted to other age recipients than its .sops.yaml rule", "missing age1")


def test_sops_rule_without_mac_only_encrypted(copy, fixtures):
    edit(copy / ".sops.yaml", "    mac_only_encrypted: true\n", "")
    found = findings(copy, fixtures)
    assert_found(found, ".sops.yaml", "creation_rules[0] (kubernetes/.*\\.enc\\.(json|yaml)$): mac_only_encrypted is not true")
    assert_found(found, TOKEN, "Secret cert-manager/digitalocean-token", "mac_only_encrypted is True, its .sops.yaml rule says False")


def test_encrypted_file_sops_cannot_read(copy, fixtures):
    path = copy / TOKEN
    text = path.read_text()
    start = text.index("    lastmodified: ")
    end = text.index("\n", start)
    path.write_text(text[:start] + '    lastmodified: "yesterday"' + text[end:])
    assert_found(findings(copy, fixtures), TOKEN, "Secret cert-manager/digitalocean-token", "sops does not read it as an encrypted file", "yesterday")


def test_plaintext_key_material(copy, fixtures, tmp_path):
    key = tmp_path / "k"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    identity = next(line for line in key.read_text().splitlines() if not line.startswith("#"))
    (copy / "terraform/notes.txt").write_text(f"first line\nsops key: {identity}\n")
    header = "-----BEGIN " + "EC PRIVATE KEY-----"
    body = base64.b64encode(os.urandom(48)).decode()  # one 64-character line of key material
    (copy / "kubernetes/leftover.pem").write_text(f"{header}\n{body}\n")
    # A bare label (code that handles PEM text) is not key material.
    (copy / "terraform/labels.txt").write_text(f"{header}\nAA==\n")
    blob = base64.b64encode((header + "\nMHcCAQEEIBkg\n").encode()).decode()
    (copy / "talosconfig.yaml").write_text(f"contexts:\n  homelab:\n    key: {blob}\n")
    found = findings(copy, fixtures)
    assert_found(found, "terraform/notes.txt:2", "age-secret-key")
    assert_found(found, "kubernetes/leftover.pem:1", "pem-private-key")
    assert_found(found, "talosconfig.yaml:3", "base64-pem-private-key")
    assert not any("labels.txt" in str(f) for f in found), found


# ---------------------------------------------------------------- reachability and Terraform


def test_unregistered_app_and_unlisted_manifest(copy, fixtures):
    app = copy / "kubernetes/apps/echo"
    app.mkdir()
    (app / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: echo\n")
    (app / "kustomization.yaml").write_text("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - namespace.yaml\n")
    (copy / "kubernetes/apps/whoami/configmap.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: whoami\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/echo/kustomization.yaml", "not listed in the parent kustomization.yaml")
    assert_found(found, "kubernetes/apps/whoami/configmap.yaml", "not listed in kubernetes/apps/whoami/kustomization.yaml")


def test_unpinned_chart(copy, fixtures):
    edit(copy / f"{CONTROLLERS}/traefik/helmrelease.yaml", "      version: 41.3.0\n", '      version: ">=40"\n')
    assert_found(findings(copy, fixtures), f"{CONTROLLERS}/traefik/helmrelease.yaml", "not pinned to an exact version")


def test_hcl_syntax_error(copy, fixtures):
    append(copy / "terraform/outputs.tf", '\noutput "broken" {\n  value = var.node_ip\n')
    assert_found(findings(copy, fixtures), "terraform/outputs.tf", "HCL syntax error")


def test_undeclared_variable(copy, fixtures):
    append(copy / "terraform/outputs.tf", '\noutput "extra" {\n  description = "x"\n  value       = var.not_declared\n}\n')
    found = findings(copy, fixtures)
    line = (copy / "terraform/outputs.tf").read_text().splitlines().index("  value       = var.not_declared") + 1
    assert_found(found, f"terraform/outputs.tf:{line}", "variable 'not_declared' is used", "not declared")


def test_unpinned_provider(copy, fixtures):
    edit(copy / "terraform/versions.tf", 'version = "0.11.0"', 'version = ">= 0.11"')
    assert_found(findings(copy, fixtures), "terraform/versions.tf", "provider talos is not pinned to an exact version")


def test_provider_missing_from_required_providers(copy, fixtures):
    append(copy / "terraform/main.tf", '\nresource "tls_private_key" "x" {\n  algorithm = "ED25519"\n}\n')
    assert_found(findings(copy, fixtures), "terraform/main.tf", "provider 'tls'", "not in required_providers")
