"""Each check fails on a broken copy of the tree, naming the file and the problem."""

from __future__ import annotations

import subprocess
from pathlib import Path

import homelab_check as hc


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


def test_plaintext_secret(copy, fixtures):
    (copy / "kubernetes/apps/whoami/secret.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: whoami\nstringData:\n  password: hunter2\n"
    )
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - secret.yaml\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/secret.yaml", "Secret whoami/creds is not SOPS-encrypted")
    assert_found(found, "kubernetes/apps/whoami/secret.yaml", "outside a *.enc.yaml file")


def test_encrypted_secret_with_a_plaintext_value(copy, fixtures):
    path = copy / "kubernetes/infrastructure/cert-manager/digitalocean-token.enc.yaml"
    text = path.read_text()
    start = text.index("access-token: ENC[")
    end = text.index("\n", start)
    path.write_text(text[:start] + "access-token: plain-value" + text[end:])
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/infrastructure/cert-manager/digitalocean-token.enc.yaml", "stringData.access-token is in plain text")


def test_unknown_field_in_a_kubernetes_kind(copy, fixtures):
    edit(copy / "kubernetes/apps/whoami/deployment.yaml", "  replicas: 1\n", "  replicas: 1\n  replica: 2\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/deployment.yaml", "Deployment whoami/whoami", "'replica' was unexpected")


def test_unknown_field_in_a_custom_resource(copy, fixtures):
    edit(copy / "kubernetes/infrastructure/traefik/certificate.yaml", "  dnsNames:\n", "  dnsName: x\n  dnsNames:\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/infrastructure/traefik/certificate.yaml", "Certificate traefik/wildcard-catinthehack-ca", "'dnsName' was unexpected", "CRD schema")


def test_wrong_type_in_a_flux_object(copy, fixtures):
    edit(copy / "kubernetes/flux-system/layers.yaml", "  prune: true\n", "  prune: yes-please\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/layers.yaml", "Kustomization flux-system/infrastructure", "is not of type 'boolean'")


def test_unknown_crd_kind_in_a_known_group(copy, fixtures):
    edit(copy / "kubernetes/infrastructure/traefik/certificate.yaml", "kind: Certificate\n", "kind: Certifcate\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/infrastructure/traefik/certificate.yaml", "unknown kind Certifcate in cert-manager.io/v1")


def test_kind_without_any_schema(copy, fixtures):
    (copy / "kubernetes/apps/whoami/widget.yaml").write_text(
        "apiVersion: widgets.example.com/v1\nkind: Widget\nmetadata:\n  name: w\n  namespace: whoami\nspec: {}\n"
    )
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - widget.yaml\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/widget.yaml", "unknown kind widgets.example.com/v1 Widget", "CHARTED_KINDS")


def test_depends_on_cycle(copy, fixtures):
    edit(
        copy / "kubernetes/flux-system/layers.yaml",
        "    - name: flux-system\n    - name: flux-components\n",
        "    - name: flux-system\n    - name: flux-components\n    - name: apps\n",
    )
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/layers.yaml", "dependsOn cycle", "flux-system/apps", "flux-system/infrastructure")


def test_depends_on_missing_object(copy, fixtures):
    edit(copy / "kubernetes/flux-system/layers.yaml", "    - name: cluster-policies\n", "    - name: cluster-policy\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/layers.yaml", "Kustomization flux-system/apps: dependsOn flux-system/cluster-policy, which does not exist")


def test_missing_source_and_path(copy, fixtures):
    edit(copy / "kubernetes/flux-system/layers.yaml", "  path: ./kubernetes/apps\n", "  path: ./kubernetes/aps\n")
    edit(copy / "kubernetes/infrastructure/kyverno/helmrelease.yaml", "        name: kyverno\n", "        name: kyvern\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/layers.yaml", "path ./kubernetes/aps does not exist")
    assert_found(found, "kubernetes/infrastructure/kyverno/helmrelease.yaml", "HelmRepository flux-system/kyvern does not exist")


def test_encrypted_files_need_decryption(copy, fixtures):
    text = (copy / "kubernetes/flux-system/layers.yaml").read_text()
    first = text.index("  decryption:\n")
    end = text.index("---", first)
    (copy / "kubernetes/flux-system/layers.yaml").write_text(text[:first] + text[end:])
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/flux-system/layers.yaml", "Kustomization flux-system/infrastructure", "holds SOPS-encrypted files")


def test_kustomize_build_failure(copy, fixtures):
    edit(copy / "kubernetes/apps/whoami/kustomization.yaml", "  - service.yaml\n", "  - service.yaml\n  - missing.yaml\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/whoami/kustomization.yaml", "kustomize build failed", "missing.yaml")


def test_plaintext_key_material(copy, fixtures, tmp_path):
    key = tmp_path / "k"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    identity = next(line for line in key.read_text().splitlines() if not line.startswith("#"))
    (copy / "terraform/notes.txt").write_text(f"first line\nsops key: {identity}\n")
    import base64
    import os

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


def test_hcl_syntax_error(copy, fixtures):
    append(copy / "terraform/outputs.tf", '\noutput "broken" {\n  value = var.node_ip\n')
    found = findings(copy, fixtures)
    assert_found(found, "terraform/outputs.tf", "HCL syntax error")


def test_undeclared_variable(copy, fixtures):
    append(copy / "terraform/outputs.tf", '\noutput "extra" {\n  description = "x"\n  value       = var.not_declared\n}\n')
    found = findings(copy, fixtures)
    line = (copy / "terraform/outputs.tf").read_text().splitlines().index("  value       = var.not_declared") + 1
    assert_found(found, f"terraform/outputs.tf:{line}", "variable 'not_declared' is used", "not declared")


def test_unpinned_provider(copy, fixtures):
    edit(copy / "terraform/versions.tf", 'version = "0.11.0"', 'version = ">= 0.11"')
    found = findings(copy, fixtures)
    assert_found(found, "terraform/versions.tf", "provider talos is not pinned to an exact version")


def test_provider_missing_from_required_providers(copy, fixtures):
    append(copy / "terraform/main.tf", '\nresource "random_id" "x" {\n  byte_length = 4\n}\n')
    found = findings(copy, fixtures)
    assert_found(found, "terraform/main.tf", "provider 'random'", "not in required_providers")


def test_unpinned_chart(copy, fixtures):
    edit(copy / "kubernetes/infrastructure/traefik/helmrelease.yaml", "      version: 41.3.0\n", '      version: ">=40"\n')
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/infrastructure/traefik/helmrelease.yaml", "not pinned to an exact version")


def test_unregistered_app_and_unlisted_manifest(copy, fixtures):
    app = copy / "kubernetes/apps/echo"
    app.mkdir()
    (app / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: echo\n")
    (app / "kustomization.yaml").write_text("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - namespace.yaml\n")
    (copy / "kubernetes/apps/whoami/configmap.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: whoami\n")
    found = findings(copy, fixtures)
    assert_found(found, "kubernetes/apps/echo/kustomization.yaml", "not listed in the parent kustomization.yaml")
    assert_found(found, "kubernetes/apps/whoami/configmap.yaml", "not listed in kubernetes/apps/whoami/kustomization.yaml")
