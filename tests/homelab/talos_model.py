"""What Talos does with a machine configuration and its patches, for the version we pin: offline.

Nothing here runs Talos. Each rule is read from Talos's source at the pinned tag and cited as
``path:lines`` in github.com/siderolabs/talos (MPL-2.0); the JSON schema is Talos's own, from
``../shared/fixtures/upstream/talos-<version>.config.schema.json``. What is not modelled is refused
(a patch that needs an unmodelled merge, a version without a model), never guessed.

The pipeline is the one ``talos_machine_configuration`` runs (terraform-provider-talos v0.11.0,
pkg/talos/util.go:55-131): generate the documents for the version contract, load every patch
(configpatcher.LoadPatches, pkg/machinery/config/configpatcher/load.go:78-132), apply them in order
(bundle.ApplyPatches, pkg/machinery/config/bundle/bundle.go:217-233 at the provider's v1.13.0:
configpatcher.Apply, apply.go:80-111, strategic merge), then the node validates the result
(container.Validate). The generator, patcher, merge and container code is the same at v1.13.0
and v1.13.9 but for one line of container.go.

- ``decode``: configloader's decoder (pkg/machinery/config/configloader/internal/decoder/decoder.go)
- ``generated``: the documents the generator emits for the version contract
- ``strategic_merge``: pkg/machinery/config/configpatcher/strategic.go and pkg/machinery/config/merge
- ``check``: container.New's duplicate and ConflictsWithKinds rules, the pinned schema, the
  per-document Validate rules used here, and the V1Alpha1ConflictValidate rules.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import jsonschema
import yaml

TALOS = "siderolabs/talos"


@dataclass(frozen=True)
class Problem:
    where: str
    rule: str
    message: str
    source: str

    def __str__(self) -> str:
        return f"{self.where}: [{self.rule}] {self.message} ({self.source})"


class TalosConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Doc:
    """One configuration document. ``kind`` is "v1alpha1" and ``api_version`` "" for the legacy
    document, as v1alpha1.Config's Kind()/APIVersion() return (types/v1alpha1/v1alpha1_provider.go:50-58)."""

    kind: str
    api_version: str
    name: str | None
    body: dict[str, Any]
    origin: str

    @property
    def label(self) -> str:
        return self.kind + (f"/{self.name}" if self.name else "")


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ConflictRule:
    """A V1Alpha1ConflictValidate rule: ``test(v1alpha1 body, doc body)`` returns the error Talos
    gives, or None."""

    kind: str
    fields: str
    test: Callable[[dict[str, Any], dict[str, Any]], str | None]
    source: str


@dataclass
class Model:
    version: str
    ref: str
    schema_file: str
    named_kinds: dict[str, str]
    merge_fields: dict[tuple[str, str], tuple[str, str]]
    conflict_rules: list[ConflictRule]
    kind_conflicts: dict[str, tuple[list[str], str]]
    validators: dict[str, Callable[[Doc], list[tuple[str, str, str]]]]
    generator_undocumented: dict[tuple[str, str], str]
    generate: Callable[["GenerateInputs"], list[Doc]]

    def cite(self, path_lines: str) -> str:
        return f"{TALOS} {self.ref} {path_lines}"


@dataclass
class GenerateInputs:
    """What terraform-provider-talos passes to the generator (pkg/talos/util.go:58-94 at v0.11.0)."""

    cluster_name: str
    endpoint: str
    kubernetes_version: str
    install_disk: str = "/dev/sda"  # generate.WithInstallDisk("/dev/sda"), util.go:62
    # generate.WithInstallImage(GenerateInstallerImage()), util.go:63 and 134-136: the provider's
    # own machinery version, v1.13.0 for v0.11.0 (go.mod).
    install_image: str = "ghcr.io/siderolabs/installer:v1.13.0"
    machine_type: str = "controlplane"


MODELS: dict[str, Model] = {}


def model_for(version: str) -> Model:
    if version not in MODELS:
        raise TalosConfigError(
            [
                Problem(
                    "image-factory/versions.yaml",
                    "no-model",
                    f"no offline model of Talos {version}: add its config schema to ../shared/fixtures/upstream/, "
                    f"and to tests/homelab/talos_model.py the documents its generator emits, its merge rules and its "
                    f"conflict rules, read from its source (modelled: {', '.join(sorted(MODELS))})",
                    "tests/homelab/talos_model.py",
                )
            ]
        )
    return MODELS[version]


# ----------------------------------------------------------------------------- decoding

# decoder.go:168-179: any of these top-level keys makes a document the legacy v1alpha1 one.
_V1ALPHA1_KEYS = ("machine", "cluster", "debug", "persist")


def decode(model: Model, text: str, origin: str) -> list[Doc]:
    """configloader.NewFromBytes as LoadPatch calls it (configpatcher/load.go:22-27)."""
    src = model.cite("pkg/machinery/config/configloader/internal/decoder/decoder.go")
    problems: list[Problem] = []
    docs: list[Doc] = []
    seen: set[tuple[str, str, str]] = set()
    try:
        loaded = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        raise TalosConfigError([Problem(origin, "yaml", str(err).replace("\n", " "), src + ":82-88")]) from err
    for index, body in enumerate(loaded):
        where = f"{origin} document {index + 1}"
        if body is None:
            continue  # null documents are skipped (decoder.go:109-113)
        if not isinstance(body, dict):
            problems.append(Problem(where, "not-a-mapping", "expected a YAML mapping", src + ":105-118"))
            continue
        if any(str(k).startswith("$patch") for k in _walk_keys(body)):
            problems.append(Problem(where, "unmodelled", "$patch: delete selectors are not modelled here", src + ":94-103"))
            continue
        api_version = body.get("apiVersion", "")
        kind = body.get("kind", "")
        name = body.get("name")
        if any(k in body for k in _V1ALPHA1_KEYS):
            api_version = api_version or ""
            kind = kind or "v1alpha1"
        doc_id = (api_version, kind or "v1alpha1", name or "")
        if doc_id in seen:
            problems.append(Problem(where, "duplicate-document", f"duplicate document {api_version}/{kind}/{name or ''} is not allowed", src + ":126-128"))
            continue
        seen.add(doc_id)
        if kind == "v1alpha1" and not api_version:
            docs.append(Doc("v1alpha1", "", None, body, where))
            continue
        if not kind:
            problems.append(Problem(where, "missing-kind", "missing kind", src + ":180-181"))
            continue
        if not api_version:
            problems.append(Problem(where, "missing-apiVersion", "missing apiVersion", src + ":182-183"))
            continue
        if (kind, api_version) not in registered_kinds(model):
            problems.append(
                Problem(
                    where,
                    "not-registered",
                    f'"{kind}" "{api_version}": not registered in Talos {model.version} (no such document in its schema)',
                    src + ":184-190",
                )
            )
            continue
        named = kind in model.named_kinds
        docs.append(Doc(kind, api_version, str(name) if named and name is not None else None, body, where))
    if problems:
        raise TalosConfigError(problems)
    return docs


def _walk_keys(value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_keys(v)


# ----------------------------------------------------------------------------- schema


@lru_cache(maxsize=None)
def _schema(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def registered_kinds(model: Model) -> dict[tuple[str, str], str]:
    """(kind, apiVersion) -> schema definition, for every root document of the pinned schema."""
    schema = _schema(str(_FIXTURES / model.schema_file))
    out: dict[tuple[str, str], str] = {}
    for ref in schema["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[1]
        props = schema["$defs"][name].get("properties", {})
        if name == "v1alpha1.Config":
            out[("v1alpha1", "")] = name
            continue
        for kind in props.get("kind", {}).get("enum", []):
            for api in props.get("apiVersion", {}).get("enum", []):
                out[(kind, api)] = name
    return out


def schema_problems(model: Model, doc: Doc, *, generated_paths: set[str] = frozenset()) -> list[Problem]:
    """The document against its definition in the pinned schema (Draft 2020-12, as declared)."""
    schema = _schema(str(_FIXTURES / model.schema_file))
    definition = registered_kinds(model)[(doc.kind, doc.api_version)]
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls({"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"})
    body = copy.deepcopy(doc.body)
    # Fields the generator emits that the schema does not document (docgen:nodoc): allowed only
    # where they came from the generator, and only those listed with their source.
    for (kind, path), _src in model.generator_undocumented.items():
        if kind == doc.kind and path in generated_paths:
            _delete_path(body, path)
    problems = []
    for err in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in err.absolute_path) or "(document)"
        problems.append(
            Problem(
                f"{doc.origin} ({doc.label}) {path}",
                "schema",
                err.message if len(err.message) < 300 else err.message[:300] + "…",
                f"{model.schema_file} $defs/{definition}",
            )
        )
    return problems


def _delete_path(body: dict[str, Any], path: str) -> None:
    parts = path.split(".")
    node = body
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            return
    node.pop(parts[-1], None)


# ----------------------------------------------------------------------------- strategic merge


class MergeError(Exception):
    pass


def merge_id(doc: Doc) -> str:
    """configpatcher/strategic.go:35-43: apiVersion/kind, plus /name for named documents."""
    return f"{doc.api_version}/{doc.kind}" + (f"/{doc.name}" if doc.name is not None else "")


def strategic_merge(model: Model, left: list[Doc], patch: list[Doc]) -> list[Doc]:
    """StrategicMerge (configpatcher/strategic.go:31-79): a patch document with the same
    (apiVersion, kind, name) is merged into the existing one (merge.Merge), any other is
    appended; then container.New (strategic.go:78) runs its duplicate and conflict checks."""
    out = [Doc(d.kind, d.api_version, d.name, copy.deepcopy(d.body), d.origin) for d in left]
    index = {merge_id(d): d for d in out}
    for doc in patch:
        target = index.get(merge_id(doc))
        if target is None:
            new = Doc(doc.kind, doc.api_version, doc.name, copy.deepcopy(doc.body), doc.origin)
            out.append(new)
            index[merge_id(new)] = new
            continue
        body = {k: v for k, v in doc.body.items() if k not in ("apiVersion", "kind")}
        _merge(model, doc.kind, target.body, body, "", doc.origin)
        target.origin = f"{target.origin} + {doc.origin}"
    container_new(model, out)
    return out


def _merge(model: Model, kind: str, left: dict[str, Any], right: dict[str, Any], prefix: str, origin: str) -> None:
    """merge.Merge (pkg/machinery/config/merge/merge.go:30-200) on the YAML tree. Where both sides
    hold a value, the Go type decides (a struct or map merges per field, a slice appends unless
    tagged `merge:"replace"` or a custom Merge exists, a scalar is replaced unless the right one
    is its zero value, a pointer is always followed): those types come from merge_fields, and an
    overlap at a path without an entry is refused."""
    for key, rvalue in right.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in left or left[key] is None:
            if rvalue is not None:
                left[key] = copy.deepcopy(rvalue)
            continue
        if rvalue is None:
            continue  # a nil pointer/slice/map on the right leaves the left alone (merge.go:60-63, 72-75)
        rule = model.merge_fields.get((kind, path))
        if rule is None:
            raise MergeError(
                f"{origin}: {kind} {path} is set by the generated configuration and by the patch, and no merge rule for "
                f"that field is modelled: read its Go type in Talos {model.version} (pkg/machinery/config/types) and add it "
                "to merge_fields in tests/homelab/talos_model.py"
            )
        semantics, _src = rule
        if semantics == "struct":
            if not isinstance(left[key], dict) or not isinstance(rvalue, dict):
                raise MergeError(f"{origin}: {kind} {path}: a mapping is expected on both sides")
            _merge(model, kind, left[key], rvalue, path, origin)
        elif semantics == "scalar":
            if isinstance(rvalue, (dict, list)):
                raise MergeError(f"{origin}: {kind} {path}: a scalar is expected")
            # merge.go:171-194: replaced unless the right side is the zero value (booleans always).
            if isinstance(rvalue, bool) or rvalue not in ("", 0):
                left[key] = rvalue
        elif semantics == "pointer":
            # merge.go:60-71: a non-nil pointer on the right is followed with overwrite=true, so
            # even its zero value replaces the left one.
            left[key] = copy.deepcopy(rvalue)
        else:
            raise MergeError(f"{origin}: {kind} {path}: merge semantics {semantics!r} are not modelled")


# ----------------------------------------------------------------------------- checks


def container_new(model: Model, docs: list[Doc]) -> None:
    """container.New (pkg/machinery/config/container/container.go:45-101 at v1.13.9)."""
    src = model.cite("pkg/machinery/config/container/container.go")
    problems = []
    seen: dict[str, Doc] = {}
    conflicting: dict[str, str] = {}
    v1alpha1 = 0
    for doc in docs:
        if doc.kind == "v1alpha1":
            v1alpha1 += 1
            if v1alpha1 > 1:
                problems.append(Problem(doc.origin, "duplicate-v1alpha1", "duplicate v1alpha1.Config", src + ":55-58"))
            continue
        doc_id = doc.kind + "/" + (doc.name or "")
        if doc_id in seen:
            problems.append(Problem(doc.origin, "duplicate-document", f"duplicate document: {doc_id}", src + ":69-71"))
        seen[doc_id] = doc
        if doc_id in conflicting:
            problems.append(Problem(doc.origin, "conflicting-documents", f"conflicting documents: {conflicting[doc_id]} and {doc_id}", src + ":75-77"))
        kinds, kind_src = model.kind_conflicts.get(doc.kind, ([], ""))
        for other in kinds:
            other_id = other + "/" + (doc.name or "")
            if other_id in seen:
                problems.append(Problem(doc.origin, "conflicting-documents", f"conflicting documents: {other_id} and {doc_id}", f"{src}:79-92, {kind_src}"))
            conflicting[other_id] = doc_id
    if problems:
        raise TalosConfigError(problems)


def check(model: Model, docs: list[Doc], generated_ids: dict[str, set[str]]) -> list[Problem]:
    """container.Validate (container.go:583-627): each document's own rules (the schema and the
    Validate methods modelled here), then every V1Alpha1ConflictValidate rule."""
    problems: list[Problem] = []
    for doc in docs:
        problems += schema_problems(model, doc, generated_paths=generated_ids.get(merge_id(doc), set()))
        for rule, message, source in model.validators.get(doc.kind, lambda d: [])(doc):
            problems.append(Problem(f"{doc.origin} ({doc.label})", rule, message, source))
    legacy = next((d for d in docs if d.kind == "v1alpha1"), None)
    if legacy is not None:
        for doc in docs:
            for rule in model.conflict_rules:
                if rule.kind != doc.kind:
                    continue
                message = rule.test(legacy.body, doc.body)
                if message:
                    problems.append(
                        Problem(
                            f"{doc.origin} ({doc.label}) vs v1alpha1 ({legacy.origin})",
                            f"conflict {rule.kind} vs v1alpha1 {rule.fields}",
                            message,
                            rule.source,
                        )
                    )
    return problems


def apply_patches(model: Model, inputs: GenerateInputs, patches: list[tuple[str, str]]) -> tuple[list[Doc], list[Problem]]:
    """Generate, apply every patch in order, validate: the whole pipeline. ``patches`` are
    (origin, YAML text). Decoding, merge and container errors stop the pipeline (Talos stops
    there too); validation problems are all returned."""
    base = model.generate(inputs)
    generated = {merge_id(d): _leaf_paths(d.body) for d in base}
    docs = base
    for origin, text in patches:
        docs = strategic_merge(model, docs, decode(model, text, origin))
    return docs, check(model, docs, generated)


def _leaf_paths(body: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in body.items():
        path = f"{prefix}.{k}" if prefix else k
        out.add(path)
        if isinstance(v, dict):
            out |= _leaf_paths(v, path)
    return out


# ----------------------------------------------------------------------------- v1.13.9

_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "upstream"


def set_fixtures(path: Path) -> None:
    global _FIXTURES
    _FIXTURES = path
    _schema.cache_clear()


def _get(body: dict[str, Any], path: str) -> Any:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _is_ip(s: Any) -> bool:
    try:
        ipaddress.ip_address(str(s))
        return True
    except ValueError:
        return False


def _v1_13_9() -> Model:
    ref = "v1.13.9"

    def c(path_lines: str) -> str:
        return f"{TALOS} {ref} {path_lines}"

    # Kinds whose documents are named: every *V1Alpha1 type with a Name() method (config.NamedDocument)
    # in pkg/machinery/config/types at v1.13.9. Every other registered kind is unnamed.
    named = {
        "ExistingVolumeConfig": c("pkg/machinery/config/types/block/existing_volume_config.go:143"),
        "ExternalVolumeConfig": c("pkg/machinery/config/types/block/external_volume_config.go:131"),
        "RawVolumeConfig": c("pkg/machinery/config/types/block/raw_volume_config.go:101"),
        "SwapVolumeConfig": c("pkg/machinery/config/types/block/swap_volume_config.go:112"),
        "UserVolumeConfig": c("pkg/machinery/config/types/block/user_volume_config.go:196"),
        "VolumeConfig": c("pkg/machinery/config/types/block/volume_config.go:173"),
        "RegistryAuthConfig": c("pkg/machinery/config/types/cri/registry_auth.go:99"),
        "RegistryMirrorConfig": c("pkg/machinery/config/types/cri/registry_mirror.go:126"),
        "RegistryTLSConfig": c("pkg/machinery/config/types/cri/registry_tls.go:122"),
        "PCIDriverRebindConfig": c("pkg/machinery/config/types/hardware/pci_driver_rebind_config.go:86"),
        "BlackholeRouteConfig": c("pkg/machinery/config/types/network/blackhole_route.go:90"),
        "BondConfig": c("pkg/machinery/config/types/network/bond.go:333"),
        "BridgeConfig": c("pkg/machinery/config/types/network/bridge.go:153"),
        "DHCPv4Config": c("pkg/machinery/config/types/network/dhcp4.go:117"),
        "DHCPv6Config": c("pkg/machinery/config/types/network/dhcp6.go:116"),
        "DummyLinkConfig": c("pkg/machinery/config/types/network/dummy.go:105"),
        "EthernetConfig": c("pkg/machinery/config/types/network/ethernet.go:181"),
        "HCloudVIPConfig": c("pkg/machinery/config/types/network/hcloud_vip.go:103"),
        "Layer2VIPConfig": c("pkg/machinery/config/types/network/layer2_vip.go:98"),
        "LinkConfig": c("pkg/machinery/config/types/network/link.go:215"),
        "LinkAliasConfig": c("pkg/machinery/config/types/network/link_alias.go:146"),
        "RoutingRuleConfig": c("pkg/machinery/config/types/network/routing_rule.go:174"),
        "NetworkRuleConfig": c("pkg/machinery/config/types/network/rule_config.go:150"),
        "StaticHostConfig": c("pkg/machinery/config/types/network/static_host.go:83"),
        "TCPProbeConfig": c("pkg/machinery/config/types/network/tcp_probe.go:112"),
        "VLANConfig": c("pkg/machinery/config/types/network/vlan.go:131"),
        "VRFConfig": c("pkg/machinery/config/types/network/vrf.go:119"),
        "WireguardConfig": c("pkg/machinery/config/types/network/wireguard.go:168"),
        "ExtensionServiceConfig": c("pkg/machinery/config/types/runtime/extensions/service_config.go:160"),
        "KmsgLogConfig": c("pkg/machinery/config/types/runtime/kmsg_log.go:88"),
        "TrustedRootsConfig": c("pkg/machinery/config/types/security/trusted_roots.go:85"),
    }

    # Where the generated configuration and our patches both set a field: its Go type decides
    # the merge (merge.go:30-200).
    types_go = "pkg/machinery/config/types/v1alpha1/v1alpha1_types.go"
    merge_fields = {
        ("v1alpha1", "machine"): ("struct", c(f"{types_go}:192 (*MachineConfig)")),
        ("v1alpha1", "machine.install"): ("struct", c(f"{types_go}:307 (*InstallConfig)")),
        ("v1alpha1", "machine.install.disk"): ("scalar", c(f"{types_go}:888 (string)")),
        ("v1alpha1", "machine.install.image"): ("scalar", c(f"{types_go}:905 (string)")),
        ("v1alpha1", "machine.install.wipe"): ("pointer", c(f"{types_go}:922 (*bool)")),
        ("v1alpha1", "machine.features"): ("struct", c(f"{types_go}:351 (*FeaturesConfig)")),
        ("v1alpha1", "machine.features.stableHostname"): ("pointer", c(f"{types_go}:2377 (*bool)")),
        ("v1alpha1", "cluster"): ("struct", c(f"{types_go}:195 (*ClusterConfig)")),
        ("v1alpha1", "cluster.allowSchedulingOnControlPlanes"): ("pointer", c(f"{types_go}:617 (*bool)")),
        # ConfigAuto *nethelpers.AutoHostnameKind: "off" is the enum's zero value, which a plain
        # field would not merge; behind the pointer it replaces "stable".
        ("HostnameConfig", "auto"): ("pointer", c("pkg/machinery/config/types/network/hostname.go:69 (*AutoHostnameKind)")),
        ("HostnameConfig", "hostname"): ("scalar", c("pkg/machinery/config/types/network/hostname.go:80 (string)")),
    }

    def hostname_conflict(v1: dict[str, Any], _doc: dict[str, Any]) -> str | None:
        # Config.Hostname() / AutoHostname(): v1alpha1_network_bridge.go:27-48.
        if _get(v1, "machine.network.hostname"):
            return "static hostname is already set in v1alpha1 config"
        if _get(v1, "machine.features.stableHostname") is True:
            return "stable hostname is already set in v1alpha1 config"
        return None

    def resolver_conflict(v1: dict[str, Any], _doc: dict[str, Any]) -> str | None:
        # SearchDomains() / Resolvers() (only entries that parse as IPs) / DisableSearchDomain():
        # v1alpha1_network_bridge.go:50-83.
        if _get(v1, "machine.network.searchDomains") is not None:
            return ".machine.network.searchDomains is already set in v1alpha1 config"
        if any(_is_ip(ns) for ns in (_get(v1, "machine.network.nameservers") or [])):
            return ".machine.network.nameservers is already set in v1alpha1 config"
        if _get(v1, "machine.network.disableSearchDomain") is True:
            return ".machine.network.disableSearchDomain is already set in v1alpha1 config"
        return None

    def time_conflict(v1: dict[str, Any], _doc: dict[str, Any]) -> str | None:
        t = _get(v1, "machine.time")  # NetworkTimeSyncConfig(): v1alpha1_network_bridge.go:85-92
        if not isinstance(t, dict):
            return None
        if t.get("disabled") is True:
            return "time sync cannot be disabled in both v1alpha1 and new-style configuration"
        if t.get("servers"):
            return "time servers cannot be specified in both v1alpha1 and new-style configuration"
        if t.get("bootTimeout") not in (None, 0, "0s", ""):
            return "boot timeout cannot be specified in both v1alpha1 and new-style configuration"
        return None

    def kubespan_conflict(v1: dict[str, Any], _doc: dict[str, Any]) -> str | None:
        if _get(v1, "machine.network.kubespan") is not None:  # v1alpha1_network_bridge.go:94-101
            return "kubespan is already configured in v1alpha1 machine.network.kubespan"
        return None

    def volume_conflict(v1: dict[str, Any], doc: dict[str, Any]) -> str | None:
        name = doc.get("name")
        if name not in ("STATE", "EPHEMERAL") or not doc.get("encryption"):
            return None
        key = {"STATE": "state", "EPHEMERAL": "ephemeral"}[name]
        # SystemDiskEncryption().Get(label): v1alpha1_provider.go:1743
        if _get(v1, f"machine.systemDiskEncryption.{key}") is not None:
            return f'system disk encryption for "{name}" is configured in both v1alpha1.Config and VolumeConfig'
        return None

    conflict_rules = [
        ConflictRule("HostnameConfig", "machine.network.hostname / machine.features.stableHostname", hostname_conflict,
                     c("pkg/machinery/config/types/network/hostname.go:150-161")),
        ConflictRule("ResolverConfig", "machine.network.searchDomains / nameservers / disableSearchDomain", resolver_conflict,
                     c("pkg/machinery/config/types/network/resolver.go:145-160")),
        ConflictRule("TimeSyncConfig", "machine.time.disabled / servers / bootTimeout", time_conflict,
                     c("pkg/machinery/config/types/network/time_sync.go:142-163")),
        ConflictRule("KubeSpanConfig", "machine.network.kubespan", kubespan_conflict,
                     c("pkg/machinery/config/types/network/kubespan.go:191-200")),
        ConflictRule("VolumeConfig", "machine.systemDiskEncryption.state / ephemeral", volume_conflict,
                     c("pkg/machinery/config/types/block/volume_config.go:281-299")),
    ]

    link_kinds = ["BondConfig", "BridgeConfig", "DummyLinkConfig", "LinkConfig", "VLANConfig", "VRFConfig", "WireguardConfig"]
    link_src = c("pkg/machinery/config/types/network/link.go:38-50")
    kind_conflicts = {k: ([o for o in link_kinds if o != k], link_src) for k in link_kinds}

    def hostname_validate(doc: Doc) -> list[tuple[str, str, str]]:
        # HostnameConfigV1Alpha1.Validate: hostname.go:115-148. The enum's zero value is "off"
        # (nethelpers AutoHostnameKind: off, talos-addr, stable), so a missing auto reads as off.
        src = c("pkg/machinery/config/types/network/hostname.go:115-148")
        out = []
        auto = doc.body.get("auto")
        hostname = doc.body.get("hostname") or ""
        if auto is None and not hostname:
            out.append(("HostnameConfig.Validate", "either 'auto' or 'hostname' must be set", src))
        if (auto or "off") != "off" and hostname:
            out.append(("HostnameConfig.Validate", "'auto' and 'hostname' cannot be set at the same time", src))
        if auto not in (None, "off", "stable"):
            out.append(("HostnameConfig.Validate", f"invalid value for 'auto': {auto}", src))
        if hostname:
            if len(hostname) > 253:
                out.append(("HostnameConfig.Validate", f"fqdn is too long: {len(hostname)}", src))
            label = hostname.split(".", 1)[0]
            if not 0 < len(label) <= 63:
                out.append(("HostnameConfig.Validate", f'invalid hostname "{label}"', src))
        return out

    def extension_service_validate(doc: Doc) -> list[tuple[str, str, str]]:
        # ServiceConfigV1Alpha1.Validate: runtime/extensions/service_config.go:131-157.
        src = c("pkg/machinery/config/types/runtime/extensions/service_config.go:131-157")
        name = doc.body.get("name") or ""
        files = doc.body.get("configFiles") or []
        env = doc.body.get("environment") or []
        if not name:
            return [("ExtensionServiceConfig.Validate", "name is required", src)]
        if not files and not env:
            return [("ExtensionServiceConfig.Validate", f'no config files found for extension "{name}"', src)]
        for f in files:
            if not f.get("content"):
                return [("ExtensionServiceConfig.Validate", f'extension content is required for extension "{name}"', src)]
            if not f.get("mountPath"):
                return [("ExtensionServiceConfig.Validate", f'extension mount path is required for extension "{name}"', src)]
        return []

    def link_alias_validate(doc: Doc) -> list[tuple[str, str, str]]:
        # LinkAliasConfigV1Alpha1.Validate: network/link_alias.go:151-174 (the CEL expression
        # itself is parsed on the node; here only its presence is checked).
        src = c("pkg/machinery/config/types/network/link_alias.go:151-174")
        out = []
        if not doc.body.get("name"):
            out.append(("LinkAliasConfig.Validate", "name must be specified", src))
        if not (doc.body.get("selector") or {}).get("match"):
            out.append(("LinkAliasConfig.Validate", "link selector is required", src))
        return out

    validators = {
        "HostnameConfig": hostname_validate,
        "ExtensionServiceConfig": extension_service_validate,
        "LinkAliasConfig": link_alias_validate,
    }

    def generate(inputs: GenerateInputs) -> list[Doc]:
        """The documents pkg/machinery/config/generate emits for contract 1.13 on a control plane
        (init.go:18-227, network.go:30-44): the v1alpha1 document and HostnameConfig{auto: stable}.
        Their shape is Talos's own golden output for that contract,
        pkg/machinery/config/types/v1alpha1/testdata/stability/v1.13/base-controlplane.yaml, with
        the provider's inputs (install disk and image, discovery, names, Kubernetes version) and
        placeholder secrets (the real ones come from talos_machine_secrets)."""
        k8s = inputs.kubernetes_version.lstrip("v")
        ca = {"crt": "PLACEHOLDER", "key": "PLACEHOLDER"}
        v1 = {
            "version": "v1alpha1",
            "debug": False,
            "persist": True,
            "machine": {
                "type": inputs.machine_type,
                "token": "PLACEHOLDER",
                "ca": dict(ca),
                "certSANs": [],
                "kubelet": {
                    "image": f"ghcr.io/siderolabs/kubelet:v{k8s}",
                    "defaultRuntimeSeccompProfileEnabled": True,
                    "disableManifestsDirectory": True,
                },
                "install": {
                    "disk": inputs.install_disk,
                    "image": inputs.install_image,
                    "wipe": False,
                    "grubUseUKICmdline": True,
                },
                "features": {
                    "diskQuotaSupport": True,
                    "kubePrism": {"enabled": True, "port": 7445},
                    "hostDNS": {"enabled": True, "forwardKubeDNSToHost": True},
                },
                "nodeLabels": {"node.kubernetes.io/exclude-from-external-load-balancers": ""},
            },
            "cluster": {
                "id": "PLACEHOLDER",
                "secret": "PLACEHOLDER",
                "controlPlane": {"endpoint": inputs.endpoint},
                "clusterName": inputs.cluster_name,
                "network": {"dnsDomain": "cluster.local", "podSubnets": ["10.244.0.0/16"], "serviceSubnets": ["10.96.0.0/12"]},
                "token": "PLACEHOLDER",
                "secretboxEncryptionSecret": "PLACEHOLDER",
                "ca": dict(ca),
                "aggregatorCA": dict(ca),
                "serviceAccount": {"key": "PLACEHOLDER"},
                "apiServer": {
                    "image": f"registry.k8s.io/kube-apiserver:v{k8s}",
                    "admissionControl": [
                        {
                            "name": "PodSecurity",
                            "configuration": {
                                "apiVersion": "pod-security.admission.config.k8s.io/v1alpha1",
                                "kind": "PodSecurityConfiguration",
                                "defaults": {
                                    "audit": "restricted", "audit-version": "latest",
                                    "enforce": "baseline", "enforce-version": "latest",
                                    "warn": "restricted", "warn-version": "latest",
                                },
                                "exemptions": {"namespaces": ["kube-system"], "runtimeClasses": [], "usernames": []},
                            },
                        }
                    ],
                    "auditPolicy": {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]},
                },
                "controllerManager": {"image": f"registry.k8s.io/kube-controller-manager:v{k8s}"},
                "proxy": {"image": f"registry.k8s.io/kube-proxy:v{k8s}"},
                "scheduler": {"image": f"registry.k8s.io/kube-scheduler:v{k8s}"},
                "discovery": {"enabled": True, "registries": {"kubernetes": {"disabled": True}, "service": {}}},
                "etcd": {"ca": dict(ca)},
            },
        }
        origin = "generated (talos_machine_configuration)"
        return [
            Doc("v1alpha1", "", None, v1, origin),
            Doc("HostnameConfig", "v1alpha1", None, {"apiVersion": "v1alpha1", "kind": "HostnameConfig", "auto": "stable"}, origin),
        ]

    return Model(
        version="v1.13.9",
        ref=ref,
        schema_file="talos-v1.13.9.config.schema.json",
        named_kinds=named,
        merge_fields=merge_fields,
        conflict_rules=conflict_rules,
        kind_conflicts=kind_conflicts,
        validators=validators,
        # ConfigPersist: docgen:nodoc, "Deprecated: Not supported anymore" (v1alpha1_types.go:186-189),
        # yet the generator still writes it (generate/init.go:22).
        generator_undocumented={("v1alpha1", "persist"): c("pkg/machinery/config/types/v1alpha1/v1alpha1_types.go:186-189")},
        generate=generate,
    )


MODELS["v1.13.9"] = _v1_13_9()
