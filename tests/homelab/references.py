"""Cross-object references: that the pieces fit.

Each rule follows the upstream API's documented resolution (the field descriptions in the CRDs
of ../shared/fixtures/upstream, and the implementations cited inline):
- Gateway API (gateway.networking.k8s.io v1): a route's parentRef defaults to group
  gateway.networking.k8s.io, kind Gateway, the route's namespace; `sectionName` names a
  listener; a listener admits routes from its own namespace unless
  `allowedRoutes.namespaces.from` says otherwise (default `Same`); a route attaches only to a
  listener whose hostname intersects the route's hostnames; a certificateRef defaults to
  kind Secret in the Gateway's namespace and needs a ReferenceGrant in another namespace;
  backendRefs default to kind Service in the route's namespace.
- Traefik binds a Gateway listener to the entrypoint whose address ends in the listener's
  port, skipping entrypoints with TLS for HTTP listeners (traefik
  pkg/provider/kubernetes/gateway/kubernetes.go `entryPointName`, v3.7.9 lines 802-818), and
  serves GatewayClasses with controllerName `traefik.io/gateway-controller` (same file,
  line 40).
- cert-manager: `issuerRef` defaults to kind Issuer in the Certificate's namespace, group
  cert-manager.io; a ClusterIssuer reads the Secrets it references from the cluster resource
  namespace (the chart's `clusterResourceNamespace`, default: cert-manager's own namespace).
- Flux: a HelmRelease's `valuesFrom` entry reads `valuesKey` (default `values.yaml`) from a
  ConfigMap or Secret in its namespace; a Kustomization's `decryption.secretRef` is a Secret in
  its namespace.
"""

from __future__ import annotations

from typing import Any, Iterator

from flux_tree import Tree
from model import Obj, Report, dig

GATEWAY_GROUP = "gateway.networking.k8s.io"
CERT_MANAGER_GROUP = "cert-manager.io"
TRAEFIK_CONTROLLER = "traefik.io/gateway-controller"
# Traefik chart 41.3.0 defaults (traefik/values.yaml, `ports:` lines 918-1053): entrypoint ->
# (port, HTTP TLS enabled).
TRAEFIK_DEFAULT_ENTRYPOINTS = {"traefik": (8080, False), "web": (8000, False), "websecure": (8443, True), "metrics": (9100, False)}
# Secrets that exist before Flux applies anything: created by the bootstrap agent.
BOOTSTRAP_SECRETS = {("flux-system", "sops-age"): "created by the bootstrap agent from the TPM-sealed SOPS key"}
CERT_MANAGER_NAMESPACE = "cert-manager"


def hostname_matches(route_host: str, listener_host: str) -> bool:
    """Gateway API hostname intersection (HTTPRoute spec.hostnames, Listener hostname)."""
    if not listener_host or not route_host:
        return True
    if route_host == listener_host:
        return True
    if listener_host.startswith("*.") and route_host.endswith(listener_host[1:]):
        return True
    if route_host.startswith("*.") and listener_host.endswith(route_host[1:]):
        return True
    return False


def certificate_covers(dns_name: str, hostname: str) -> bool:
    """Whether an X.509 name covers a hostname (a wildcard covers exactly one label)."""
    if dns_name == hostname:
        return True
    if dns_name.startswith("*."):
        base = dns_name[2:]
        if hostname.startswith("*."):
            return hostname[2:] == base
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == base
    return False


def _secret_keys(obj: Obj) -> set[str]:
    return {str(k) for k in (obj.body.get("data") or {})} | {str(k) for k in (obj.body.get("stringData") or {})}


def _key_refs(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `…SecretRef` holding both `name` and `key` (a reference to one key of a Secret)."""
    if isinstance(value, dict):
        for k, v in value.items():
            here = f"{path}.{k}" if path else str(k)
            if k.endswith("SecretRef") and isinstance(v, dict) and "name" in v and "key" in v:
                yield here, v
            else:
                yield from _key_refs(v, here)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _key_refs(v, f"{path}[{i}]")


def _traefik_entrypoints(tree: Tree) -> dict[str, tuple[int, bool]] | None:
    releases = [o for o in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io") if dig(o.spec, "chart", "spec", "chart") == "traefik"]
    if not releases:
        return None
    ports = dict(TRAEFIK_DEFAULT_ENTRYPOINTS)
    for name, conf in (dig(releases[0].spec, "values", "ports", default={}) or {}).items():
        if not isinstance(conf, dict):
            continue
        port, tls = ports.get(name, (None, False))
        port = conf.get("port", port)
        tls = bool(dig(conf, "http", "tls", "enabled", default=dig(conf, "tls", "enabled", default=tls)))
        if port is not None:
            ports[name] = (int(port), tls)
    return ports


def _gateway_provider_enabled(tree: Tree) -> bool:
    return any(
        dig(o.spec, "chart", "spec", "chart") == "traefik" and dig(o.spec, "values", "providers", "kubernetesGateway", "enabled", default=False)
        for o in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io")
    )


def check_gateways(tree: Tree, report: Report) -> None:
    classes = {o.name: o for o in tree.by_kind("GatewayClass", GATEWAY_GROUP)}
    entrypoints = _traefik_entrypoints(tree)
    for cls in classes.values():
        controller = cls.spec.get("controllerName")
        if controller == TRAEFIK_CONTROLLER:
            if not _gateway_provider_enabled(tree):
                report.find(cls.source, f"{cls.ident()}: controllerName {controller} but no Traefik HelmRelease has providers.kubernetesGateway.enabled: nothing serves this class")
        else:
            report.find(cls.source, f"{cls.ident()}: controllerName {controller!r} is served by no controller in the tree (Traefik serves {TRAEFIK_CONTROLLER})")
    for gw in tree.by_kind("Gateway", GATEWAY_GROUP):
        cls_name = gw.spec.get("gatewayClassName")
        cls = classes.get(str(cls_name))
        if cls is None:
            report.find(gw.source, f"{gw.ident()}: gatewayClassName {cls_name!r} names no GatewayClass in the tree (GatewayClasses: {', '.join(sorted(classes)) or 'none'})")
        traefik = cls is not None and cls.spec.get("controllerName") == TRAEFIK_CONTROLLER
        for listener in gw.spec.get("listeners") or []:
            name, port, protocol = listener.get("name"), listener.get("port"), listener.get("protocol")
            if traefik and entrypoints is not None:
                usable = sorted(p for p, tls in entrypoints.values() if not (protocol == "HTTP" and tls))
                if port not in usable:
                    report.find(
                        gw.source,
                        f"{gw.ident()} listener {name}: port {port} ({protocol}) matches no Traefik entrypoint "
                        f"(HelmRelease traefik values.ports; usable for {protocol}: {', '.join(map(str, usable))}): Traefik ignores the listener",
                    )
            for ref in dig(listener, "tls", "certificateRefs", default=[]) or []:
                kind, ref_ns, ref_name = ref.get("kind", "Secret"), ref.get("namespace") or gw.namespace, ref.get("name")
                if kind != "Secret" or (ref.get("group") or "") != "":
                    continue
                if ref_ns != gw.namespace and not _granted(tree, "Gateway", gw.namespace, "Secret", ref_ns, ref_name):
                    report.find(gw.source, f"{gw.ident()} listener {name}: certificateRef Secret {ref_ns}/{ref_name} is in another namespace and no ReferenceGrant there allows it")
                producers = [c for c in tree.by_kind("Certificate", CERT_MANAGER_GROUP) if c.namespace == ref_ns and c.spec.get("secretName") == ref_name]
                if not producers and tree.get("Secret", ref_ns, ref_name) is None:
                    report.find(gw.source, f"{gw.ident()} listener {name}: certificateRef Secret {ref_ns}/{ref_name} is produced by no Certificate and is no Secret in the tree")
                host = listener.get("hostname") or ""
                for cert in producers:
                    names = [str(n) for n in (cert.spec.get("dnsNames") or [])]
                    if host and not any(certificate_covers(n, host) for n in names):
                        report.find(gw.source, f"{gw.ident()} listener {name}: hostname {host} is not covered by Certificate {cert.namespace}/{cert.name} (dnsNames: {', '.join(names)})")


def _granted(tree: Tree, from_kind: str, from_ns: str, to_kind: str, to_ns: str, to_name: str) -> bool:
    for grant in tree.by_kind("ReferenceGrant", GATEWAY_GROUP):
        if grant.namespace != to_ns:
            continue
        froms = any(f.get("kind") == from_kind and f.get("namespace") == from_ns for f in grant.spec.get("from") or [])
        tos = any(t.get("kind") == to_kind and (not t.get("name") or t.get("name") == to_name) for t in grant.spec.get("to") or [])
        if froms and tos:
            return True
    return False


def _listeners(tree: Tree, ns: str, name: str) -> tuple[Obj | None, list[dict[str, Any]]]:
    gw = tree.get("Gateway", ns, name, GATEWAY_GROUP)
    return gw, list((gw.spec.get("listeners") if gw else None) or [])


def check_routes(tree: Tree, report: Report) -> None:
    for route in [o for o in tree.objects if o.group == GATEWAY_GROUP and o.kind.endswith("Route")]:
        hostnames = [str(h) for h in route.spec.get("hostnames") or []]
        for ref in route.spec.get("parentRefs") or []:
            group, kind = ref.get("group", GATEWAY_GROUP), ref.get("kind", "Gateway")
            if group != GATEWAY_GROUP or kind != "Gateway":
                continue
            ns, name, section = ref.get("namespace") or route.namespace, ref.get("name"), ref.get("sectionName")
            gw, listeners = _listeners(tree, ns, name)
            if gw is None:
                gateways = ", ".join(sorted(f"{g.namespace}/{g.name}" for g in tree.by_kind("Gateway", GATEWAY_GROUP))) or "none"
                report.find(route.source, f"{route.ident()}: parentRef Gateway {ns}/{name} does not exist in the tree (Gateways: {gateways})")
                continue
            candidates = [lst for lst in listeners if section is None or lst.get("name") == section]
            if section is not None and not candidates:
                report.find(
                    route.source,
                    f"{route.ident()}: parentRef Gateway {ns}/{name} has no listener {section!r} (listeners: {', '.join(str(lst.get('name')) for lst in listeners)})",
                )
                continue
            if ref.get("port") is not None:
                candidates = [lst for lst in candidates if lst.get("port") == ref.get("port")]
            allowed = [lst for lst in candidates if _admits(tree, lst, gw, route)]
            if not allowed:
                report.find(route.source, f"{route.ident()}: no listener of Gateway {ns}/{name}{' ' + repr(section) if section else ''} admits routes from namespace {route.namespace} (allowedRoutes.namespaces.from defaults to Same)")
                continue
            if hostnames and not any(hostname_matches(h, str(lst.get("hostname") or "")) for lst in allowed for h in hostnames):
                report.find(
                    route.source,
                    f"{route.ident()}: hostnames {', '.join(hostnames)} match no hostname of the listeners of Gateway {ns}/{name} it attaches to "
                    f"({', '.join(str(lst.get('hostname') or '*') for lst in allowed)}): the route is not accepted",
                )
        for rule in route.spec.get("rules") or []:
            for backend in rule.get("backendRefs") or []:
                if (backend.get("group") or "") != "" or backend.get("kind", "Service") != "Service":
                    continue
                ns, name, port = backend.get("namespace") or route.namespace, backend.get("name"), backend.get("port")
                svc = tree.get("Service", ns, name)
                if svc is None:
                    report.find(route.source, f"{route.ident()}: backendRef Service {ns}/{name} does not exist in the tree")
                elif port is not None and port not in [p.get("port") for p in svc.spec.get("ports") or []]:
                    report.find(route.source, f"{route.ident()}: backendRef Service {ns}/{name} has no port {port}")
                elif ns != route.namespace and not _granted(tree, route.kind, route.namespace, "Service", ns, name):
                    report.find(route.source, f"{route.ident()}: backendRef Service {ns}/{name} is in another namespace and no ReferenceGrant allows it")


def _admits(tree: Tree, listener: dict[str, Any], gw: Obj, route: Obj) -> bool:
    frm = dig(listener, "allowedRoutes", "namespaces", "from", default="Same")
    if frm == "All":
        return True
    if frm == "Same":
        return route.namespace == gw.namespace
    if frm == "Selector":
        selector = dig(listener, "allowedRoutes", "namespaces", "selector", "matchLabels", default={}) or {}
        ns = tree.get("Namespace", "", route.namespace)
        labels = dict(dig(ns.body, "metadata", "labels", default={}) or {}) if ns else {}
        labels.setdefault("kubernetes.io/metadata.name", route.namespace)
        return all(labels.get(k) == v for k, v in selector.items())
    return False


def check_certificates(tree: Tree, report: Report) -> None:
    used: dict[tuple[str, str], list[tuple[Obj, dict[str, Any]]]] = {}
    for gw in tree.by_kind("Gateway", GATEWAY_GROUP):
        for listener in gw.spec.get("listeners") or []:
            for ref in dig(listener, "tls", "certificateRefs", default=[]) or []:
                used.setdefault((ref.get("namespace") or gw.namespace, str(ref.get("name"))), []).append((gw, listener))
    for cert in tree.by_kind("Certificate", CERT_MANAGER_GROUP):
        secret = str(cert.spec.get("secretName", ""))
        listeners = used.get((cert.namespace, secret), [])
        if not listeners:
            refs = ", ".join(f"{n}/{s}" for n, s in sorted(used)) or "none"
            report.find(cert.source, f"{cert.ident()}: secretName {secret} is used by no Gateway listener's certificateRefs (listeners use: {refs})")
        else:
            served = [str(lst.get("hostname") or "") for _, lst in listeners if lst.get("protocol") in ("HTTPS", "TLS")]
            for dns_name in cert.spec.get("dnsNames") or []:
                if not any(h == dns_name for h in served):
                    gws = ", ".join(sorted({f"{g.namespace}/{g.name}" for g, _ in listeners}))
                    report.find(
                        cert.source,
                        f"{cert.ident()}: covers {dns_name} but no HTTPS listener of Gateway {gws} using Secret {cert.namespace}/{secret} has hostname {dns_name} "
                        f"(listener hostnames: {', '.join(served) or 'none'})",
                    )
        ref = cert.spec.get("issuerRef") or {}
        kind, group, name = ref.get("kind", "Issuer"), ref.get("group", CERT_MANAGER_GROUP), ref.get("name")
        if group != CERT_MANAGER_GROUP:
            report.note(cert.source, f"{cert.ident()}: issuerRef of external group {group} is not checked")
            continue
        issuer = tree.get(kind, "" if kind == "ClusterIssuer" else cert.namespace, str(name), CERT_MANAGER_GROUP)
        if issuer is None:
            where = "ClusterIssuer" if kind == "ClusterIssuer" else f"Issuer in namespace {cert.namespace}"
            names = ", ".join(sorted(o.name for o in tree.by_kind(kind, CERT_MANAGER_GROUP))) or "none"
            report.find(cert.source, f"{cert.ident()}: issuerRef {kind} {name} does not exist in the tree (no such {where}; {kind}s: {names})")


def check_secret_keys(tree: Tree, report: Report) -> None:
    for obj in tree.objects:
        if obj.group == CERT_MANAGER_GROUP and obj.kind in ("ClusterIssuer", "Issuer"):
            ns = _cluster_resource_namespace(tree) if obj.kind == "ClusterIssuer" else obj.namespace
            for path, ref in _key_refs(obj.spec, "spec"):
                _require_key(tree, report, obj, path, ns, str(ref["name"]), str(ref["key"]))
        if obj.kind == "HelmRelease" and obj.group == "helm.toolkit.fluxcd.io":
            for i, ref in enumerate(obj.spec.get("valuesFrom") or []):
                kind, name, key = ref.get("kind"), str(ref.get("name")), str(ref.get("valuesKey") or "values.yaml")
                target = tree.get(str(kind), obj.namespace, name)
                if target is None:
                    if not ref.get("optional"):
                        report.find(obj.source, f"{obj.ident()}: spec.valuesFrom[{i}] {kind} {obj.namespace}/{name} does not exist in the tree")
                elif key not in _secret_keys(target):
                    report.find(obj.source, f"{obj.ident()}: spec.valuesFrom[{i}] {kind} {obj.namespace}/{name} has no key {key} (keys: {', '.join(sorted(_secret_keys(target)))})")
        if obj.group == "kustomize.toolkit.fluxcd.io" and obj.kind == "Kustomization":
            ref = dig(obj.spec, "decryption", "secretRef", "name")
            if ref and (obj.namespace, ref) not in BOOTSTRAP_SECRETS and tree.get("Secret", obj.namespace, str(ref)) is None:
                report.find(obj.source, f"{obj.ident()}: spec.decryption.secretRef {obj.namespace}/{ref} is neither in the tree nor created by the bootstrap agent")
        if obj.group == "source.toolkit.fluxcd.io":
            ref = dig(obj.spec, "secretRef", "name")
            if ref and tree.get("Secret", obj.namespace, str(ref)) is None and (obj.namespace, ref) not in BOOTSTRAP_SECRETS:
                report.find(obj.source, f"{obj.ident()}: spec.secretRef Secret {obj.namespace}/{ref} does not exist in the tree")


def _cluster_resource_namespace(tree: Tree) -> str:
    """Where a ClusterIssuer's Secrets live: the cert-manager chart's `clusterResourceNamespace`,
    by default the release's namespace (values.schema.json at v1.21.1, its description)."""
    for hr in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io"):
        if dig(hr.spec, "chart", "spec", "chart") == "cert-manager":
            return str(dig(hr.spec, "values", "clusterResourceNamespace", default="") or hr.spec.get("targetNamespace") or hr.namespace)
    return CERT_MANAGER_NAMESPACE


def _require_key(tree: Tree, report: Report, obj: Obj, path: str, ns: str, name: str, key: str) -> None:
    secret = tree.get("Secret", ns, name)
    if secret is None:
        report.find(obj.source, f"{obj.ident()}: {path} names Secret {ns}/{name}, which does not exist in the tree")
    elif key not in _secret_keys(secret):
        report.find(obj.source, f"{obj.ident()}: {path} names key {key!r} of Secret {ns}/{name} ({secret.source}), which has only: {', '.join(sorted(_secret_keys(secret))) or 'no keys'}")


def check_references(tree: Tree) -> Report:
    report = Report()
    check_gateways(tree, report)
    check_routes(tree, report)
    check_certificates(tree, report)
    check_secret_keys(tree, report)
    return report
