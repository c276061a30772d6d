"""The homelab's conventions, each with its upstream reason:

- HelmReleases install and upgrade with `strategy: {name: RetryOnFailure}`: a failed action is
  retried every `retryInterval` (default 5m) for ever (helm-controller api/v2
  helmrelease_types.go at v1.6.3: `Install.GetRetry`, `InstallStrategy.GetRetryInterval`, and
  the same for Upgrade, lines 650-690 and 939-970); the default, RemediateOnFailure with
  `remediation.retries`, stops after the last retry and waits for a human.
- Kyverno policies are `policies.kyverno.io` policies (ImageValidatingPolicy, ValidatingPolicy);
  kyverno.io ClusterPolicy/Policy are the deprecated form. Each is in Audit
  (`validationActions: [Audit]`), with `failurePolicy: Ignore` and background scanning on, so a
  one-replica Kyverno that is down or slow never blocks the cluster (the CRD's field
  documentation: failurePolicy Fail rejects requests when the webhook fails).
- nfs-subdir-external-provisioner: `archiveOnDelete` only acts when the provisioner deletes a
  volume, which the external-provisioner library does only for reclaimPolicy Delete
  (cmd/nfs-subdir-external-provisioner/provisioner.go `Delete`, lines 146-186 at
  nfs-subdir-external-provisioner-4.0.18; the chart writes both into the StorageClass,
  templates/storageclass.yaml): with Retain it never runs.
- The flux-system sync objects carry their intervals as Go durations (`1m0s`, `10m0s`), the
  form `flux bootstrap` writes (fluxcd/flux2 pkg/manifestgen/sync/sync.go lines 63-64 and
  92-93, metav1.Duration) and the bootstrap agent applies (agent/src/kube/flux.rs
  `go_duration`): any other spelling of the same interval makes the agent and Flux rewrite the
  field back and forth.
"""

from __future__ import annotations

import re

from flux_tree import ROOT_KEY, Tree
from model import Report, dig

KYVERNO_DEPRECATED = {("kyverno.io", "ClusterPolicy"), ("kyverno.io", "Policy")}
KYVERNO_POLICY_GROUP = "policies.kyverno.io"
GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def go_duration(text: str) -> str | None:
    """The Go time.Duration spelling of a simple h/m/s interval (`1m` -> `1m0s`), as
    agent/src/kube/flux.rs `go_duration` writes it."""
    m = GO_DURATION.match(str(text))
    if not m or not any(m.groups()):
        return None
    total = sum(int(v or 0) * f for v, f in zip(m.groups(), (3600, 60, 1)))
    h, rest = divmod(total, 3600)
    mi, s = divmod(rest, 60)
    if h:
        return f"{h}h{mi}m{s}s"
    if mi:
        return f"{mi}m{s}s"
    return f"{s}s"


def check_conventions(tree: Tree) -> Report:
    report = Report()
    for hr in tree.by_kind("HelmRelease", "helm.toolkit.fluxcd.io"):
        for action in ("install", "upgrade"):
            name = dig(hr.spec, action, "strategy", "name")
            if name != "RetryOnFailure":
                retries = dig(hr.spec, action, "remediation", "retries")
                after = f" (remediation.retries {retries} stops after {retries} failures and waits for a human)" if retries is not None else ""
                report.find(
                    hr.source,
                    f"{hr.ident()}: spec.{action}.strategy.name is {name or 'unset (RemediateOnFailure)'}{after}; set strategy: {{name: RetryOnFailure}} so a failed {action} is retried until it succeeds",
                )
        if str(dig(hr.spec, "chart", "spec", "chart", default="")) == "nfs-subdir-external-provisioner":
            sc = dig(hr.spec, "values", "storageClass", default={}) or {}
            reclaim = sc.get("reclaimPolicy", "Delete")
            if reclaim == "Retain" and "archiveOnDelete" in sc and not sc.get("onDelete"):
                report.find(
                    hr.source,
                    f"{hr.ident()}: storageClass.archiveOnDelete: {sc['archiveOnDelete']} has no effect with reclaimPolicy Retain (the provisioner never deletes, "
                    "every deleted claim leaves a Released volume); use reclaimPolicy Delete with archiveOnDelete: true to keep the data as an archived directory",
                )
    for obj in tree.objects:
        if (obj.group, obj.kind) in KYVERNO_DEPRECATED:
            report.find(obj.source, f"{obj.ident()}: {obj.api_version} {obj.kind} is deprecated; write it as a policies.kyverno.io/v1 policy (ImageValidatingPolicy for image signatures)")
        if obj.group == KYVERNO_POLICY_GROUP and obj.kind.endswith("Policy"):
            actions = obj.spec.get("validationActions")
            if actions is not None and list(actions) != ["Audit"]:
                report.find(obj.source, f"{obj.ident()}: validationActions {actions}: policies run in Audit only (violations in PolicyReports, nothing denied)")
            if obj.spec.get("failurePolicy") != "Ignore":
                report.find(
                    obj.source,
                    f"{obj.ident()}: failurePolicy {obj.spec.get('failurePolicy', 'unset (Fail)')}: with one Kyverno replica an outage would block Pod creation; set failurePolicy: Ignore",
                )
            if dig(obj.spec, "evaluation", "background", "enabled", default=True) is False:
                report.find(obj.source, f"{obj.ident()}: background scanning is off: Pods admitted while Kyverno was down are never checked; remove evaluation.background.enabled: false")
    for kind in ("GitRepository", "Kustomization"):
        obj = tree.get(kind, ROOT_KEY[0], ROOT_KEY[1])
        if obj is None:
            continue
        interval = str(obj.spec.get("interval", ""))
        canonical = go_duration(interval)
        if canonical is not None and canonical != interval:
            report.find(
                obj.source,
                f"{obj.ident()}: interval {interval!r} is written {canonical!r} by flux bootstrap and by the bootstrap agent; write {canonical!r} so they never rewrite each other's field",
            )
    return report
