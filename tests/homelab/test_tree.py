"""The committed tree passes every check, and holds what the homelab needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import hcl2
import pytest
import tomllib
import yaml

import conventions
import homelab_check as hc
import tfeval


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    for doc in docs:
        if doc.get("kind") == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"{kind} {name} not found")


def hcl(root: Path, name: str) -> dict:
    return hcl2.loads((root / "terraform" / name).read_text())


def unquote(value):
    return value.strip('"') if isinstance(value, str) else value


def variable_default(root: Path, name: str):
    for block in hcl(root, "variables.tf")["variable"]:
        for key, body in block.items():
            if unquote(key) == name:
                return unquote(body.get("default"))
    raise AssertionError(f"variable {name} not declared")


def test_tree_passes_every_check(root, fixtures):
    report = hc.check_all(root, fixtures)
    print(report.render())
    assert report.findings == [], "\n" + report.render()
    # What cannot be checked offline is listed, not passed silently.
    listed = "\n".join(str(n) for n in report.notes)
    assert "HelmRelease kyverno/kyverno: no values.schema.json or values.yaml of chart kyverno 3.9.0" in listed


def test_missing_fixtures_fail_with_a_clear_message(root, tmp_path):
    with pytest.raises(hc.FixturesMissing, match=str(tmp_path / "nowhere")):
        hc.check_all(root, tmp_path / "nowhere")


def _layers(root: Path) -> dict[str, dict]:
    docs = load_yaml_docs(root / "kubernetes/flux-system/layers.yaml") + load_yaml_docs(root / "kubernetes/flux-system/gateway-api.yaml")
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Kustomization"}


def test_layers_are_chained_controllers_before_configs(root):
    layers = _layers(root)
    deps = {name: sorted(x["name"] for x in spec.get("dependsOn", [])) for name, spec in layers.items()}
    assert deps["infra-controllers"] == ["flux-components", "gateway-api"], "Traefik (a controller) installs after the Gateway API CRDs"
    assert deps["infra-configs"] == ["infra-controllers"]
    assert deps["certificates"] == ["infra-controllers"]
    assert deps["cluster-policies"] == ["infra-controllers"]
    assert deps["apps"] == ["infra-configs"]
    # A DNS-01 failure (or a missing SOPS key) leaves only `certificates` not Ready.
    assert not [n for n, d in deps.items() if "certificates" in d], "nothing may depend on the certificates layer"
    assert all(spec["wait"] for spec in layers.values()), "each layer must wait for its objects before the next starts"


def test_only_the_layers_with_encrypted_files_decrypt(root):
    layers = _layers(root)
    assert [n for n, spec in layers.items() if "decryption" in spec] == ["certificates"]
    sync = find(load_yaml_docs(root / "kubernetes/flux-system/gotk-sync.yaml"), "Kustomization", "flux-system")
    assert "decryption" not in sync["spec"], "flux-system must sync before the SOPS key exists"
    assert not list((root / "kubernetes/flux-system").rglob("*.enc.*"))


def test_helmreleases_retry_until_they_succeed(root):
    for path in sorted((root / "kubernetes").rglob("helmrelease.yaml")):
        spec = load_yaml_docs(path)[0]["spec"]
        for action in ("install", "upgrade"):
            assert spec[action]["strategy"] == {"name": "RetryOnFailure"}, f"{path}: {action}"
            assert "remediation" not in spec[action], f"{path}: {action}.remediation is unused with RetryOnFailure"


def test_site_values_come_from_one_config_map(root):
    settings = find(load_yaml_docs(root / "kubernetes/flux-system/cluster-settings.yaml"), "ConfigMap", "cluster-settings")
    assert settings["data"]["SITE_DOMAIN"] == "catinthehack.ca"
    # The domain is written nowhere else in the tree.
    for path in sorted((root / "kubernetes").rglob("*.yaml")):
        if path.name not in ("cluster-settings.yaml",) and not path.name.endswith(".enc.yaml"):
            assert "catinthehack.ca" not in path.read_text(), f"{path}: use ${{SITE_DOMAIN}}"
    for name, spec in _layers(root).items():
        if name in ("infra-controllers", "infra-configs", "certificates", "apps"):
            assert {"kind": "ConfigMap", "name": "cluster-settings"} in spec["postBuild"]["substituteFrom"], name


def test_sync_objects_match_the_agent_configuration(root):
    """gotk-sync.yaml carries what the agent applies from its flux section (rendered by
    Terraform): the agent writes intervals as Go durations (agent/src/kube/flux.rs
    `go_duration`) and, for the flux-system Kustomization, no decryption."""
    docs = load_yaml_docs(root / "kubernetes/flux-system/gotk-sync.yaml")
    repo = find(docs, "GitRepository", "flux-system")
    sync = find(docs, "Kustomization", "flux-system")
    main = hcl(root, "main.tf")
    agent = next(b["agent_config"] for b in main["locals"] if "agent_config" in b)
    flux = agent["flux"]
    assert repo["spec"]["url"] == variable_default(root, "flux_git_url")
    assert repo["spec"]["ref"] == {"branch": variable_default(root, "flux_git_branch")}
    assert repo["spec"]["interval"] == conventions.go_duration(unquote(flux["interval"])) == "1m0s"
    kustomization_interval = unquote(flux.get("kustomizationInterval", '"10m"'))
    assert sync["spec"]["interval"] == conventions.go_duration(kustomization_interval) == "10m0s"
    assert sync["spec"]["path"] == unquote(flux["path"]) == "./kubernetes/flux-system"
    assert sync["spec"]["prune"] is True
    assert sync["spec"]["sourceRef"] == {"kind": "GitRepository", "name": "flux-system"}
    assert set(sync["spec"]) == {"interval", "path", "prune", "sourceRef"}, "the agent applies exactly these fields (no decryption)"
    # The secret the agent unseals is the one the decrypting layers use.
    ev = tfeval.Evaluator(
        root / "terraform",
        {"sops_age_recipient": "age1" + "q" * 58},
        resources={"random_bytes.tpm_factor": {"hex": "00" * 32}},
    )
    (entry,) = ev.local("agent_config")["secrets"]
    assert {k: entry[k] for k in ("namespace", "name", "key")} == {
        "namespace": "flux-system",
        "name": "sops-age",
        "key": "age.agekey",
    }, f"agent secrets entry: {entry}"
    assert unquote(agent["talos"]["socket"]) == "/system/run/machined/machine.sock"
    assert unquote(agent["status"]) == "/var/lib/bootstrap-agent/status.json"


def test_agent_config_document_is_an_extension_service_config(root):
    text = (root / "terraform/patches/bootstrap-agent.yaml.tftpl").read_text()
    assert "kind: ExtensionServiceConfig" in text
    assert "name: bootstrap-agent" in text
    assert "mountPath: /usr/local/etc/bootstrap-agent/config.yaml" in text


def test_vm_keeps_its_tpm_and_nothing_bootstraps_but_the_agent(root):
    main = hcl(root, "main.tf")
    resources = {unquote(t): body for block in main["resource"] for t, body in block.items()}
    assert "talos_machine_bootstrap" not in resources, "the agent bootstraps etcd; Terraform must not"
    vm = resources["proxmox_virtual_environment_vm"]['"talos"']
    lifecycle = vm["lifecycle"][0]
    assert lifecycle["prevent_destroy"] is True
    assert "tpm_state" in json.dumps(lifecycle["ignore_changes"])
    assert unquote(vm["tpm_state"][0]["version"]) == "v2.0"
    assert unquote(vm["bios"]) == "ovmf" and vm["efi_disk"][0]["pre_enrolled_keys"] is False
    assert "cdrom" in vm and "agent" in vm


def test_terraform_defaults_describe_the_homelab(root):
    assert variable_default(root, "cpu_cores") == 4
    assert variable_default(root, "memory_mb") == 16384
    assert variable_default(root, "disk_gb") == 100
    assert variable_default(root, "mac_address") == "BC:24:11:CA:FE:01"
    assert variable_default(root, "node_ip") == "192.168.20.100"
    assert variable_default(root, "node_prefix_length") == 24
    assert variable_default(root, "gateway") == "192.168.20.1"


def test_every_variable_is_described_and_every_output_documented(root):
    for block in hcl(root, "variables.tf")["variable"]:
        for name, body in block.items():
            assert body.get("description"), f"variable {name} has no description"
    for block in hcl(root, "outputs.tf")["output"]:
        for name, body in block.items():
            assert body.get("description"), f"output {name} has no description"


def test_committed_secret_is_a_sops_envelope(root):
    doc = load_yaml_docs(root / "kubernetes/infrastructure/certificates/digitalocean-token.enc.yaml")[0]
    assert doc["kind"] == "Secret"
    assert hc.sops_envelope_problems(doc, ("data", "stringData")) == []


def _age_key(tmp_path: Path) -> tuple[Path, str]:
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, recipient


def test_sops_round_trip_with_real_sops(tmp_path):
    """A Secret encrypted by the real sops passes the envelope check and decrypts back."""
    key, recipient = _age_key(tmp_path)
    plain = tmp_path / "secret.yaml"
    plain.write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: t\n  namespace: n\nstringData:\n  token: hunter2\n")
    enc = subprocess.run(
        ["sops", "--config", "/dev/null", "encrypt", "--age", recipient, "--encrypted-regex", "^(data|stringData)$", str(plain)],
        check=True, capture_output=True, text=True,
    ).stdout
    doc = yaml.safe_load(enc)
    assert "hunter2" not in enc
    assert hc.sops_envelope_problems(doc, ("data", "stringData")) == []
    (tmp_path / "secret.enc.yaml").write_text(enc)
    out = subprocess.run(
        ["sops", "--config", "/dev/null", "decrypt", str(tmp_path / "secret.enc.yaml")],
        check=True, capture_output=True, text=True, env={**os.environ, "SOPS_AGE_KEY_FILE": str(key)},
    ).stdout
    assert yaml.safe_load(out)["stringData"]["token"] == "hunter2"


def test_terraform_export_command_writes_only_ciphertext(root, tmp_path):
    """Run the local-exec command of terraform_data.export as Terraform would."""
    main = hcl(root, "main.tf")
    export = next(
        b['"terraform_data"']['"export"'] for b in main["resource"] if '"export"' in b.get('"terraform_data"', {})
    )
    heredoc = export["provisioner"][0]['"local-exec"']["command"]
    assert heredoc.startswith('"<<-EOT\n'), heredoc[:20]
    command = textwrap.dedent(heredoc.removeprefix('"<<-EOT\n').removesuffix('"').rstrip().removesuffix("EOT"))
    key, recipient = _age_key(tmp_path)
    content = "context: homelab\ncontexts:\n  homelab:\n    key: c2VjcmV0LWtleS1ieXRlcw==\n"
    env = {**os.environ, "EXPORT_DIR": str(tmp_path), "EXPORT_NAME": "talosconfig", "EXPORT_CONTENT": content, "EXPORT_RECIPIENT": recipient}
    subprocess.run(["/bin/sh", "-c", command], check=True, env=env, cwd=root / "terraform", capture_output=True)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["age.key", "talosconfig.enc.yaml"], written
    enc = (tmp_path / "talosconfig.enc.yaml").read_text()
    assert "c2VjcmV0LWtleS1ieXRlcw==" not in enc
    assert hc.sops_envelope_problems(yaml.safe_load(enc)) == []
    out = subprocess.run(
        ["sops", "--config", "/dev/null", "decrypt", "--input-type", "yaml", "--output-type", "yaml", str(tmp_path / "talosconfig.enc.yaml")],
        check=True, capture_output=True, text=True, env={**os.environ, "SOPS_AGE_KEY_FILE": str(key)},
    ).stdout
    assert yaml.safe_load(out) == yaml.safe_load(content)


def _renovate_regexes(root: Path) -> list[re.Pattern]:
    config = json.loads((root / "renovate.json").read_text())
    out = []
    for manager in config["customManagers"]:
        for pattern in manager["matchStrings"]:
            out.append(re.compile(pattern.replace("(?<", "(?P<")))
    return out


def test_every_renovate_annotation_is_picked_up(root):
    regexes = _renovate_regexes(root)
    annotated = 0
    for path in sorted(list((root / "kubernetes").rglob("*.yaml")) + list((root / "terraform").glob("*.tf")) + [root / ".mise.toml", root / "image-factory/versions.yaml"]):
        text = path.read_text()
        for match in re.finditer(r"^[ \t]*# renovate:.*$", text, re.M):
            annotated += 1
            ok = any(r.match(text, match.start() + len(match.group(0)) - len(match.group(0).lstrip())) for r in regexes)
            assert ok, f"{path.relative_to(root)}: annotation {match.group(0).strip()!r} is not matched by any Renovate custom manager"
    assert annotated >= 2


def test_renovate_match_strings_are_re2(root):
    """Renovate runs its regex managers with RE2 (no lookaround, no backreferences): every
    matchString must compile there (google-re2, the same library)."""
    import re2

    config = json.loads((root / "renovate.json").read_text())
    for manager in config["customManagers"]:
        for pattern in manager["matchStrings"]:
            re2.compile(pattern.replace("(?<", "(?P<"))


def test_task_and_hook_definitions_run_the_suite_and_upstream_tools(root):
    mise = tomllib.loads((root / ".mise.toml").read_text())
    tasks = mise["tasks"]
    assert set(tasks["check"]["depends"]) == {"check:homelab", "check:terraform", "check:kubernetes", "check:gitleaks"}
    assert "pytest" in tasks["check:homelab"]["run"]
    assert any("tflint" in step for step in tasks["check:terraform"]["run"])
    assert "kubeconform" in tasks["check:kubernetes"]["run"]
    hooks = yaml.safe_load((root / "lefthook.yml").read_text())["pre-commit"]["commands"]
    for name in ("homelab-suite", "terraform-fmt", "terraform-validate", "tflint", "kubeconform", "gitleaks"):
        assert name in hooks
