"""The machine configuration Terraform renders is one Talos accepts, checked offline.

terraform/main.tf's patches are rendered as Terraform would (tfeval.py: templatefile and the HCL
expressions feeding it), merged onto the documents the pinned Talos version's generator emits,
and checked against that version's schema and rules (talos_model.py, every rule cited to Talos's
source). The pinned version is the one in image-factory/versions.yaml.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import talos_model as tm
import tfeval

SEALED = "-----BEGIN AGE ENCRYPTED FILE-----\nYWdlLWVuY3J5cHRpb24ub3JnL3YxCg==\n-----END AGE ENCRYPTED FILE-----\n"
# What the first boot shows and the operator pins (any well-formed values).
RECIPIENT = "age1" + "q" * 58
SALT_KEY_NAME = "000b" + "ab" * 32
# random_bytes.tpm_factor.hex once applied (Terraform knows it only then).
FACTOR = "5eed" * 16
# The second apply: the sealed key, the pins, and the ISO ejected (main.tf refuses a sealed key
# while the ISO is attached).
SEALED_VARS = {"sops_age_key_sealed": SEALED, "tpm_recipient": RECIPIENT, "tpm_salt_key_name": SALT_KEY_NAME, "talos_iso_attached": False}


@pytest.fixture(scope="module")
def talos_fixtures(fixtures: Path) -> Path:
    tm.set_fixtures(fixtures)
    return fixtures


def evaluator(root: Path, **overrides) -> tfeval.Evaluator:
    values = {"sops_age_recipient": "age1" + "q" * 58, **overrides}
    return tfeval.Evaluator(root / "terraform", values, resources={"random_bytes.tpm_factor": {"hex": FACTOR}})


def agent_config(ev: tfeval.Evaluator) -> dict:
    """The agent's configuration file as the ExtensionServiceConfig delivers it."""
    _model, docs, _problems = pipeline(ev)
    esc = next(d for d in docs if d.kind == "ExtensionServiceConfig").body
    assert esc["name"] == "bootstrap-agent"
    (config_file,) = esc["configFiles"]
    assert config_file["mountPath"] == "/usr/local/etc/bootstrap-agent/config.yaml"
    return yaml.safe_load(config_file["content"])


def rendered(ev: tfeval.Evaluator) -> list[tuple[str, str]]:
    """(origin, text) of every patch in local.config_patches, in order."""
    texts = ev.local("config_patches")
    assert len(ev.template_calls) == len(texts), "every machine-config patch must be a templatefile() of terraform/patches/"
    return [(str(path.relative_to(ev.dir.parent)), text) for (path, _vars), text in zip(ev.template_calls, texts)]


def pipeline(ev: tfeval.Evaluator, extra: list[tuple[str, str]] = ()) -> tuple[tm.Model, list[tm.Doc], list[tm.Problem]]:
    model = tm.model_for(ev.local("talos_version"))
    inputs = tm.GenerateInputs(
        cluster_name=ev.var("cluster_name", "test"),
        endpoint=ev.local("cluster_endpoint"),
        kubernetes_version=ev.local("kubernetes_version"),
    )
    docs, problems = tm.apply_patches(model, inputs, rendered(ev) + list(extra))
    return model, docs, problems


def render_problems(problems: list[tm.Problem]) -> str:
    return "\n" + "\n".join(str(p) for p in problems)


# ----------------------------------------------------------------------------- the real patches


@pytest.mark.parametrize("pins", [{}, SEALED_VARS], ids=["first-boot", "sealed-key"])
def test_rendered_patches_are_accepted_by_the_pinned_talos(root, talos_fixtures, pins):
    ev = evaluator(root, **pins)
    model, docs, problems = pipeline(ev)
    assert problems == [], render_problems(problems)
    labels = [d.label for d in docs]
    # Multi-document configuration where the pinned version has it.
    for label in ("HostnameConfig", "ResolverConfig", "LinkAliasConfig/lan0", "LinkConfig/lan0",
                  "VolumeConfig/STATE", "VolumeConfig/EPHEMERAL", "ExtensionServiceConfig/bootstrap-agent"):
        assert label in labels, labels
    v1 = docs[0].body
    assert "network" not in v1["machine"], "machine.network is deprecated and undocumented in Talos 1.13: use the multi-doc documents"
    hostname = next(d for d in docs if d.kind == "HostnameConfig").body
    assert hostname["auto"] == "off" and hostname["hostname"] == ev.var("vm_name", "test")
    assert v1["machine"]["install"]["image"] == ev.local("installer_image")


def test_every_patch_document_is_documented_in_the_pinned_schema(root, talos_fixtures):
    """Each document as rendered, before any merge: only fields the schema documents."""
    ev = evaluator(root, **SEALED_VARS)
    model = tm.model_for(ev.local("talos_version"))
    problems = []
    for origin, text in rendered(ev):
        for doc in tm.decode(model, text, origin):
            problems += tm.schema_problems(model, doc)
    assert problems == [], render_problems(problems)


def test_the_agent_configuration_reaches_the_extension_service(root, talos_fixtures):
    agent = agent_config(evaluator(root, **SEALED_VARS))
    assert agent["bundle"]["dir"] == "/bundle", "the bundle sits at /bundle inside the service's root"
    assert agent["secrets"] == [{"namespace": "flux-system", "name": "sops-age", "key": "age.agekey", "sealed": SEALED.strip()}]
    assert agent["talos"]["socket"] == "/system/run/machined/machine.sock"
    # The pins and the key factor, next to the sealed key.
    tpm = agent["tpm"]
    assert tpm["recipient"] == RECIPIENT and tpm["saltKeyName"] == SALT_KEY_NAME, tpm
    assert tpm["factor"] == FACTOR, "tpm.factor is random_bytes.tpm_factor.hex"
    assert tpm["device"] == "/dev/tpmrm0" and "insecureTransport" not in tpm, tpm


def test_the_first_boot_enrols_with_the_key_factor_and_nothing_pinned(root, talos_fixtures):
    """Without the factor the recipient shown at the first boot would not be the one the sealed
    key needs; without the secret's entry the agent would not enrol at all."""
    agent = agent_config(evaluator(root))
    assert agent["secrets"] == [{"namespace": "flux-system", "name": "sops-age", "key": "age.agekey", "sealed": None}]
    tpm = agent["tpm"]
    assert tpm["factor"] == FACTOR
    assert tpm["recipient"] is None and tpm["saltKeyName"] is None, tpm


def test_the_apply_that_delivers_the_sealed_key_reboots_the_node(root):
    """The agent locks the seed at every boot: the sealed key is unsealed on the next boot only.
    terraform-provider-talos v0.11.0 takes apply_mode "reboot" (pkg/talos/
    talos_machine_configuration_apply_resource.go:108-117)."""
    import hcl2

    main = hcl2.loads((root / "terraform/main.tf").read_text())
    resources = {}
    for block in main["resource"]:
        for rtype, named in block.items():
            for name, body in named.items():
                resources[f"{rtype.strip(chr(34))}.{name.strip(chr(34))}"] = body
    reboot = resources["talos_machine_configuration_apply.reboot_for_sealed_inputs"]
    assert reboot["apply_mode"].strip('"') == "reboot", reboot
    assert "var.sops_age_key_sealed" in str(reboot["count"]), "only once a sealed key is set"
    (lifecycle,) = reboot["lifecycle"]
    assert "terraform_data.sealed_inputs" in str(lifecycle["replace_triggered_by"]), "again whenever it changes"
    assert "machine_configuration_input" in str(lifecycle["ignore_changes"]), "never for other changes"
    assert "var.sops_age_key_sealed" in str(resources["terraform_data.sealed_inputs"]["input"])
    assert "talos_machine_configuration_apply.reboot_for_sealed_inputs" in str(
        resources["talos_machine_configuration_apply.this"]["depends_on"]
    ), "the regular apply comes after the reboot and then finds nothing to change"
    # The ISO leaves the VM after the install (talos_iso_attached): our signed image is not
    # left for anyone to boot with another configuration.
    assert "var.talos_iso_attached" in str(resources["proxmox_virtual_environment_file.talos_iso"]["count"])
    factor = resources["random_bytes.tpm_factor"]
    assert factor["length"] == 32 and factor["lifecycle"][0]["prevent_destroy"] is True


def preconditions(root: Path) -> list[dict]:
    """The preconditions of data.talos_machine_configuration.this, as python-hcl2 gives them."""
    import hcl2

    main = hcl2.loads((root / "terraform/main.tf").read_text())
    for block in main["data"]:
        body = block.get('"talos_machine_configuration"', {}).get('"this"')
        if body is not None:
            (lifecycle,) = body["lifecycle"]
            return lifecycle["precondition"]
    raise AssertionError("terraform/main.tf has no data.talos_machine_configuration.this")


def iso_precondition(root: Path) -> dict:
    (found,) = [p for p in preconditions(root) if "var.sops_age_key_sealed" in p["condition"] and "var.talos_iso_attached" in p["condition"]]
    return found


@pytest.mark.parametrize(
    "sealed, iso_attached, holds",
    [("", True, True), ("", False, True), (SEALED, False, True), (SEALED, True, False)],
    ids=["first-apply", "reinstall-pending", "sealed-iso-ejected", "sealed-iso-attached"],
)
def test_a_sealed_key_with_the_iso_still_attached_is_refused(root, sealed, iso_attached, holds):
    """Once the key is sealed the install is done: the signed ISO must not stay bootable."""
    pre = iso_precondition(root)
    ev = evaluator(root, sops_age_key_sealed=sealed, talos_iso_attached=iso_attached, tpm_recipient=RECIPIENT)
    assert ev.expression(pre["condition"], "main.tf: precondition") is holds, pre["condition"]
    assert "talos_iso_attached = false" in pre["error_message"], pre["error_message"]


@pytest.mark.parametrize("pins", [{}, SEALED_VARS], ids=["first-boot", "sealed-key"])
def test_the_phases_rendered_here_pass_the_sealed_key_preconditions(root, pins):
    """The variables these tests render with are ones Terraform accepts for the sealed key."""
    ev = evaluator(root, **pins)
    for pre in preconditions(root):
        if "var.sops_age_key_sealed" in pre["condition"]:
            assert ev.expression(pre["condition"], "main.tf: precondition") is True, pre["error_message"]


def terraform_outputs(workdir: Path, outputs: list[str]) -> dict:
    """The real terraform's values for `output` blocks, applied in an empty module (no providers,
    no network)."""
    (workdir / "main.tf").write_text("".join(outputs))
    env = {"TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir)}
    run = subprocess.run(["terraform", "apply", "-auto-approve", "-input=false", "-no-color"], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = subprocess.run(["terraform", "output", "-json"], cwd=workdir, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return {name: o["value"] for name, o in json.loads(out).items()}


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed (mise install gets it)")
def test_the_real_terraform_evaluates_the_iso_precondition_as_we_do(root, tmp_path):
    condition = iso_precondition(root)["condition"].strip()
    assert condition.startswith("${") and condition.endswith("}")
    cases = [("", True), ("", False), (SEALED, False), (SEALED, True)]
    outputs = []
    for i, (sealed, iso) in enumerate(cases):
        expr = condition[2:-1].replace("var.sops_age_key_sealed", json.dumps(sealed)).replace("var.talos_iso_attached", json.dumps(iso))
        outputs.append(f'output "c{i}" {{\n  value = {expr}\n}}\n')
    values = terraform_outputs(tmp_path, outputs)
    theirs = [values[f"c{i}"] for i in range(len(cases))]
    ev = tfeval.Evaluator(root / "terraform", {"sops_age_recipient": RECIPIENT})
    ours = []
    for sealed, iso in cases:
        ev.variables.update(sops_age_key_sealed=sealed, talos_iso_attached=iso)
        ours.append(ev.expression(condition, "main.tf: precondition"))
    assert ours == theirs == [True, True, True, False]


# ----------------------------------------------------------------------------- rules that must bite


def test_a_static_hostname_in_v1alpha1_fails_naming_the_rule(root, talos_fixtures):
    ev = evaluator(root)
    bad = ("conflicting.yaml", "machine:\n  network:\n    hostname: talos\n")
    _model, _docs, problems = pipeline(ev, [bad])
    conflicts = [p for p in problems if p.rule.startswith("conflict HostnameConfig")]
    assert len(conflicts) == 1, render_problems(problems)
    (p,) = conflicts
    assert p.message == "static hostname is already set in v1alpha1 config"
    assert p.rule == "conflict HostnameConfig vs v1alpha1 machine.network.hostname / machine.features.stableHostname"
    assert p.source.endswith("v1.13.9 pkg/machinery/config/types/network/hostname.go:150-161")
    assert "conflicting.yaml" in p.where
    # machine.network is not in the 1.13.9 schema either.
    assert any(q.rule == "schema" and "network" in q.message for q in problems), render_problems(problems)


@pytest.mark.parametrize(
    "patch, rule, message",
    [
        ("machine:\n  network:\n    nameservers: [1.1.1.1]\n", "conflict ResolverConfig", ".machine.network.nameservers is already set in v1alpha1 config"),
        ("machine:\n  features:\n    stableHostname: true\n", "conflict HostnameConfig", "stable hostname is already set in v1alpha1 config"),
        ("machine:\n  systemDiskEncryption:\n    state:\n      provider: luks2\n", "conflict VolumeConfig",
         'system disk encryption for "STATE" is configured in both v1alpha1.Config and VolumeConfig'),
    ],
    ids=["nameservers", "stable-hostname", "system-disk-encryption"],
)
def test_other_v1alpha1_fields_conflict_with_our_documents(root, talos_fixtures, patch, rule, message):
    _model, _docs, problems = pipeline(evaluator(root), [("conflicting.yaml", patch)])
    assert any(p.rule.startswith(rule) and p.message == message for p in problems), render_problems(problems)


def test_a_hostname_without_auto_off_is_rejected_after_the_merge(root, talos_fixtures):
    """The generated HostnameConfig says auto: stable; a patch that only adds the hostname keeps it."""
    ev = evaluator(root)
    model = tm.model_for(ev.local("talos_version"))
    inputs = tm.GenerateInputs("homelab", "https://192.0.2.1:6443", ev.local("kubernetes_version"))
    patch = ("hostname-only.yaml", "apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: talos\n")
    _docs, problems = tm.apply_patches(model, inputs, [patch])
    assert [p.message for p in problems] == ["'auto' and 'hostname' cannot be set at the same time"], render_problems(problems)
    assert problems[0].source.endswith("pkg/machinery/config/types/network/hostname.go:115-148")


def test_a_document_the_pinned_version_does_not_know_is_refused(root, talos_fixtures):
    """Talos 1.14's KubeNodeConfig does not exist in 1.13: the decoder refuses it."""
    patch = ("future.yaml", "apiVersion: v1alpha1\nkind: KubeNodeConfig\n")
    with pytest.raises(tm.TalosConfigError) as err:
        pipeline(evaluator(root), [patch])
    (p,) = err.value.problems
    assert p.rule == "not-registered" and "KubeNodeConfig" in p.message and "future.yaml" in p.where


def test_an_unmodelled_merge_is_refused_not_guessed(root, talos_fixtures):
    patch = ("kubelet.yaml", "machine:\n  kubelet:\n    image: ghcr.io/siderolabs/kubelet:v1.36.0\n")
    with pytest.raises(tm.MergeError, match=r"v1alpha1 machine\.kubelet is set by the generated configuration and by the patch"):
        pipeline(evaluator(root), [patch])


def test_link_kinds_conflict_by_name(root, talos_fixtures):
    patch = ("bond.yaml", "apiVersion: v1alpha1\nkind: BondConfig\nname: lan0\nlinks: [eth0]\nbondMode: active-backup\n")
    with pytest.raises(tm.TalosConfigError) as err:
        pipeline(evaluator(root), [patch])
    assert any(p.rule == "conflicting-documents" and "LinkConfig/lan0 and BondConfig/lan0" in p.message for p in err.value.problems)


def test_an_unpinned_version_has_no_model():
    with pytest.raises(tm.TalosConfigError, match="no offline model of Talos v1.14.0"):
        tm.model_for("v1.14.0")


# ----------------------------------------------------------------------------- templatefile subset


@pytest.mark.parametrize(
    "template, variables, message",
    [
        ("a: ${jsonencode(x)}\n%{ if x }b%{ endif }\n", {"x": 1}, "template directive"),
        ("a: ${upper(x)}\n", {"x": "v"}, "not in the supported template subset"),
        ("a: ${x}\n", {"x": ["list"]}, "string required"),
        ("a: ${y}\n", {"x": "v"}, 'vars map does not contain key "y"'),
        ("a: ${x}\n", {"x": "v", "unused": 1}, "never used by the template: unused"),
        ("a: $${x}\n", {"x": "v"}, "escape sequence"),
        ("a: ${x ~}\n", {"x": "v"}, "strip marker"),
    ],
    ids=["directive", "other-function", "list-in-string", "undefined", "unused", "escape", "strip-marker"],
)
def test_unknown_template_syntax_fails(tmp_path, template, variables, message):
    path = tmp_path / "t.yaml.tftpl"
    path.write_text(template)
    with pytest.raises(tfeval.TfError, match=message) as err:
        tfeval.render_template(path, variables)
    assert "t.yaml.tftpl" in str(err.value)


@pytest.mark.parametrize(
    "expression, value",
    [
        ("!true", False),
        ("!!false", False),
        ("true && false", False),
        ("false || true", True),
        ("!false && true || false", True),
        ("false && true || true", True),
        ('!(var.x == "")', True),
        ('var.x == "" || !var.flag', False),
        ('var.x != "" && var.flag', True),
    ],
    ids=["not", "not-not", "and", "or", "precedence-not-and-or", "precedence-and-or", "not-parenthesised", "or-with-not", "and-with-vars"],
)
def test_logical_operators(tmp_path, expression, value):
    ev = tfeval.Evaluator(tmp_path, {"x": "set", "flag": True})
    assert ev.expression(expression, "t.tf") is value


@pytest.mark.parametrize(
    "expression, message",
    [
        ('!"yes"', r"Unsuitable value for the operand of !: bool required \(got 'yes'\)"),
        ("1 && true", r"Unsuitable value for left operand of &&: bool required \(got 1\)"),
        ("true || null", r"Unsuitable value for right operand of \|\|: bool required \(got None\)"),
        ('var.x || false', r"Unsuitable value for left operand of \|\|: bool required"),
    ],
    ids=["not-string", "and-number", "or-null", "or-string-var"],
)
def test_logical_operators_take_bools_only(tmp_path, expression, message):
    ev = tfeval.Evaluator(tmp_path, {"x": "set"})
    with pytest.raises(tfeval.TfError, match=message) as err:
        ev.expression(expression, "t.tf")
    assert "t.tf" in str(err.value)


def test_every_template_is_used_and_every_patch_comes_from_one(root):
    ev = evaluator(root)
    rendered(ev)
    used = {path.name for path, _vars in ev.template_calls}
    on_disk = {p.name for p in (root / "terraform/patches").glob("*")}
    assert used == on_disk, f"templates not rendered by main.tf: {sorted(on_disk - used)}"
    assert all(name.endswith(".yaml.tftpl") for name in on_disk)


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not installed (mise install gets it)")
def test_the_real_terraform_renders_the_same_patches(root, tmp_path):
    """Where Terraform is installed: its templatefile gives the same bytes for the same inputs."""
    ev = evaluator(root, **SEALED_VARS)
    ours = [text for _origin, text in rendered(ev)]
    outputs = []
    for i, (path, variables) in enumerate(ev.template_calls):
        outputs.append(f'output "p{i}" {{\n  value = templatefile({json.dumps(str(path))}, jsondecode({json.dumps(tfeval.jsonencode(variables))}))\n}}\n')
    theirs = terraform_outputs(tmp_path, outputs)
    assert [theirs[f"p{i}"] for i in range(len(ours))] == ours


def test_a_resource_attribute_known_only_after_apply_must_be_given(root):
    ev = tfeval.Evaluator(root / "terraform", {"sops_age_recipient": "age1" + "q" * 58})
    with pytest.raises(tfeval.TfError, match=r"random_bytes\.tpm_factor\.hex is known only after apply"):
        ev.local("agent_config")
