//! Checks an extension against Talos's rules (and, with [`Policy::bootstrap_agent`], ours).
//!
//! Talos's own checks (pkg/machinery/extensions): the root holds exactly `manifest.yaml` and
//! `rootfs/`; `version: v1alpha1`; the compatibility constraint parses as a semver range; every
//! non-directory under `rootfs/` starts with one of Talos's allowed paths
//! ([`TALOS_ALLOWED_PATHS`], read from the pinned Talos version); nothing world-writable; no
//! special files. Service specs in `/usr/local/etc/containers/*.yaml`: name `^[-_a-z0-9]+$`, a
//! valid restart kind, a non-empty entrypoint, each `depends` entry with exactly one kind. Beyond
//! Talos we check what would fail only on the node: the entrypoint exists in the service's root,
//! is executable and is a static ELF. Every finding names the path and the rule; all findings are
//! reported, not just the first.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::elf::{self, ElfKind};
use crate::oci;
use crate::tree::{Node, Tree, normalise};
use crate::{Error, semver_range};

/// The rule a finding breaks. `name()` is stable and meant for scripts and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// OCI structure: missing or tampered blobs, bad index/manifest/config.
    ImageStructure,
    TopLevel,
    ManifestSyntax,
    ManifestVersion,
    ManifestField,
    CompatibilityRange,
    AllowedPath,
    WorldWritable,
    SpecialFile,
    ServiceSyntax,
    ServiceName,
    ServiceField,
    ServiceRestart,
    ServiceDepends,
    ServiceMissing,
    EntrypointMissing,
    EntrypointNotExecutable,
    EntrypointNotStatic,
    LeastPrivilege,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::ImageStructure => "image-structure",
            Rule::TopLevel => "top-level",
            Rule::ManifestSyntax => "manifest-syntax",
            Rule::ManifestVersion => "manifest-version",
            Rule::ManifestField => "manifest-field",
            Rule::CompatibilityRange => "compatibility-range",
            Rule::AllowedPath => "allowed-path",
            Rule::WorldWritable => "world-writable",
            Rule::SpecialFile => "special-file",
            Rule::ServiceSyntax => "service-syntax",
            Rule::ServiceName => "service-name",
            Rule::ServiceField => "service-field",
            Rule::ServiceRestart => "service-restart",
            Rule::ServiceDepends => "service-depends",
            Rule::ServiceMissing => "service-missing",
            Rule::EntrypointMissing => "entrypoint-missing",
            Rule::EntrypointNotExecutable => "entrypoint-not-executable",
            Rule::EntrypointNotStatic => "entrypoint-not-static",
            Rule::LeastPrivilege => "least-privilege",
        }
    }
}

/// One broken rule at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Path inside the image (`rootfs/usr/local/...`), or of the blob for structural problems.
    pub path: String,
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: [{}] {}", self.path, self.rule.name(), self.message)
    }
}

/// How a path is compared with an allowed prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMatch {
    /// A plain string prefix, as Talos compares (`/usr/localx` starts with `/usr/local`):
    /// pkg/machinery/extensions/validate.go:153-169 at v1.13.9 (`strings.HasPrefix`; the
    /// `filepath.Rel` after it never fails for two absolute paths).
    Text,
    /// The prefix itself or a path below it, component by component.
    PathComponent,
}

/// Which rules apply beyond Talos's own.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Prefixes (absolute, inside `rootfs/`) under which files may live.
    pub allowed_prefixes: Vec<&'static str>,
    /// How a path is compared with them.
    pub prefix_match: PrefixMatch,
    /// A service spec that must be present (by service name).
    pub required_service: Option<&'static str>,
    /// Reject `writeableRootfs` / `writeableSysfs` and a missing compatibility range.
    pub least_privilege: bool,
}

/// The Talos version [`TALOS_ALLOWED_PATHS`] was read from: the pinned one
/// (image-factory/versions.yaml; a test fails when they differ, so a Talos upgrade re-reads it).
pub const TALOS_ALLOWED_PATHS_VERSION: &str = "v1.13.9";

/// Talos's allowed paths, `AllowedPaths` in pkg/machinery/extensions/extensions.go:11-35 at
/// [`TALOS_ALLOWED_PATHS_VERSION`]. Firmware lives under `/usr/lib/firmware` (the old
/// `/lib/firmware` is not allowed since Talos 1.11).
pub const TALOS_ALLOWED_PATHS: &[&str] = &[
    "/etc/cri/conf.d",
    "/usr/lib/firmware",
    "/usr/lib/modules",
    "/usr/lib/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
    "/usr/bin/ldconfig",
    "/etc/ld.so.conf",
    "/etc/ld.so.cache",
    "/usr/bin/nvidia-modprobe",
    "/usr/bin/nvidia-pcc",
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-ctk",
    "/usr/bin/nvidia-cdi-hook",
    "/usr/bin/nvme",
    "/usr/lib/udev/rules.d",
    "/usr/local",
    "/usr/share/glvnd",
    "/usr/share/egl",
    "/etc/vulkan",
];

impl Policy {
    /// Exactly Talos's rules: any extension that passes loads on a node.
    pub fn talos() -> Policy {
        Policy {
            allowed_prefixes: TALOS_ALLOWED_PATHS.to_vec(),
            prefix_match: PrefixMatch::Text,
            required_service: None,
            least_privilege: false,
        }
    }

    /// Ours: files only under `/usr/local`, the `bootstrap-agent` service present, no writable
    /// root or sysfs, a compatibility range present.
    pub fn bootstrap_agent() -> Policy {
        Policy {
            allowed_prefixes: vec!["/usr/local"],
            prefix_match: PrefixMatch::PathComponent,
            required_service: Some("bootstrap-agent"),
            least_privilege: true,
        }
    }
}

/// Findings for one image (an OCI layout or archive may hold several).
#[derive(Debug, Clone)]
pub struct Report {
    /// What was checked: the path, with `:tag` for images in a layout.
    pub subject: String,
    pub findings: Vec<Finding>,
}

/// Validates whatever `path` is: an OCI layout directory, an OCI archive tar, a flat
/// extension tar (imager `tarballPath`), an unpacked tree (`manifest.yaml` + `rootfs/`), or an
/// OCI runtime bundle as `umoci unpack` writes it (its `rootfs/` is checked).
pub fn validate_path(path: &Path, policy: &Policy) -> Result<Vec<Report>, Error> {
    let subject = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        if path.join("oci-layout").is_file() {
            let read = |rel: &str| std::fs::read(path.join(rel)).ok();
            return Ok(reports_from_images(
                oci::read_images(&read, &subject),
                policy,
            ));
        }
        // An OCI runtime bundle (`umoci unpack` output): the image's filesystem is its rootfs/.
        let bundle_root = path.join("rootfs");
        let root = if bundle_root.join("manifest.yaml").is_file()
            && (path.join("umoci.json").is_file() || path.join("config.json").is_file())
        {
            bundle_root
        } else {
            path.to_path_buf()
        };
        let tree = Tree::from_dir(&root)?;
        return Ok(vec![Report {
            subject: root.display().to_string(),
            findings: validate_tree(&tree, policy),
        }]);
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let files = oci::tar_files(&bytes, &subject)?;
    if files.contains_key("oci-layout") {
        let read = |rel: &str| files.get(rel).cloned();
        return Ok(reports_from_images(
            oci::read_images(&read, &subject),
            policy,
        ));
    }
    let tree = Tree::from_tar(bytes.as_slice(), &subject)?;
    Ok(vec![Report {
        subject,
        findings: validate_tree(&tree, policy),
    }])
}

fn reports_from_images(
    images: Vec<(String, Result<Tree, Vec<oci::BlobProblem>>)>,
    policy: &Policy,
) -> Vec<Report> {
    images
        .into_iter()
        .map(|(subject, result)| {
            let findings = match result {
                Ok(tree) => validate_tree(&tree, policy),
                Err(problems) => problems
                    .into_iter()
                    .map(|p| Finding {
                        path: p.path,
                        rule: Rule::ImageStructure,
                        message: p.message,
                    })
                    .collect(),
            };
            Report { subject, findings }
        })
        .collect()
}

const SPEC_DIR: &str = "rootfs/usr/local/etc/containers";
const CONTAINERS_DIR: &str = "rootfs/usr/local/lib/containers";

/// Validates an extension's filesystem.
pub fn validate_tree(tree: &Tree, policy: &Policy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |path: &str, rule: Rule, message: String| {
        findings.push(Finding {
            path: path.to_string(),
            rule,
            message,
        })
    };

    // Top level: exactly manifest.yaml and rootfs/.
    for name in tree.top_level() {
        if name != "manifest.yaml" && name != "rootfs" {
            add(
                name,
                Rule::TopLevel,
                "unexpected top-level entry: an extension holds exactly manifest.yaml and rootfs/ (Talos rejects the image)".into(),
            );
        }
    }
    match tree.get("rootfs").map(|e| &e.node) {
        Some(Node::Dir) => {}
        Some(_) => add(
            "rootfs",
            Rule::TopLevel,
            "rootfs must be a directory".into(),
        ),
        None => add("rootfs", Rule::TopLevel, "rootfs/ is missing".into()),
    }
    match tree.get("manifest.yaml").map(|e| &e.node) {
        Some(Node::File(bytes)) => check_manifest(bytes, policy, &mut add),
        Some(_) => add(
            "manifest.yaml",
            Rule::TopLevel,
            "manifest.yaml must be a regular file".into(),
        ),
        None => add(
            "manifest.yaml",
            Rule::TopLevel,
            "manifest.yaml is missing".into(),
        ),
    }

    // Every entry: modes, kinds, allowed paths.
    for (path, entry) in &tree.entries {
        if let Node::Special(kind) = entry.node {
            add(
                path,
                Rule::SpecialFile,
                format!("{kind}: special files are not allowed in extensions"),
            );
        }
        let is_symlink = matches!(entry.node, Node::Symlink(_));
        if !is_symlink && entry.mode & 0o002 != 0 {
            add(
                path,
                Rule::WorldWritable,
                format!(
                    "mode {:04o} is world-writable; drop the o+w bit",
                    entry.mode
                ),
            );
        }
        if let Some(inside) = path.strip_prefix("rootfs/")
            && entry.node != Node::Dir
        {
            let abs = format!("/{inside}");
            let allowed = policy
                .allowed_prefixes
                .iter()
                .any(|p| match policy.prefix_match {
                    PrefixMatch::Text => abs.starts_with(p),
                    PrefixMatch::PathComponent => abs == *p || abs.starts_with(&format!("{p}/")),
                });
            if !allowed {
                add(
                    path,
                    Rule::AllowedPath,
                    format!(
                        "{abs} is outside the allowed prefixes ({}); move it under one of them",
                        policy.allowed_prefixes.join(", ")
                    ),
                );
            }
        }
    }

    // Service specs.
    let mut services = Vec::new();
    for (path, entry) in tree.entries.range(format!("{SPEC_DIR}/")..) {
        let Some(file) = path.strip_prefix(&format!("{SPEC_DIR}/")) else {
            break;
        };
        if file.contains('/') || !file.ends_with(".yaml") {
            continue;
        }
        if let Node::File(bytes) = &entry.node
            && let Some(name) = check_service(path, bytes, tree, policy, &mut add)
        {
            services.push(name);
        }
    }
    if let Some(required) = policy.required_service
        && !services.iter().any(|s| s == required)
    {
        add(
            &format!("{SPEC_DIR}/{required}.yaml"),
            Rule::ServiceMissing,
            format!("no valid service spec named `{required}`"),
        );
    }
    findings
}

fn parse_yaml(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}

fn check_manifest(bytes: &[u8], policy: &Policy, add: &mut impl FnMut(&str, Rule, String)) {
    let path = "manifest.yaml";
    let doc = match parse_yaml(bytes) {
        Ok(v) => v,
        Err(e) => return add(path, Rule::ManifestSyntax, format!("not valid YAML: {e}")),
    };
    match doc.get("version").and_then(Value::as_str) {
        Some("v1alpha1") => {}
        Some(other) => add(
            path,
            Rule::ManifestVersion,
            format!("version is `{other}`; the only version Talos accepts is `v1alpha1`"),
        ),
        None => add(
            path,
            Rule::ManifestVersion,
            "version is missing; set `version: v1alpha1`".into(),
        ),
    }
    let meta = doc.get("metadata");
    for field in ["name", "version"] {
        let ok = meta
            .and_then(|m| m.get(field))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !ok {
            add(
                path,
                Rule::ManifestField,
                format!("metadata.{field} must be a non-empty string"),
            );
        }
    }
    for field in ["author", "description"] {
        if let Some(v) = meta.and_then(|m| m.get(field))
            && !v.is_string()
        {
            add(
                path,
                Rule::ManifestField,
                format!("metadata.{field} must be a string"),
            );
        }
    }
    match meta
        .and_then(|m| m.get("compatibility"))
        .and_then(|c| c.get("talos"))
        .and_then(|t| t.get("version"))
    {
        Some(Value::String(range)) => {
            if let Err(why) = semver_range::check(range) {
                add(
                    path,
                    Rule::CompatibilityRange,
                    format!("metadata.compatibility.talos.version `{range}` is not a valid range: {why}"),
                );
            }
        }
        Some(_) => add(
            path,
            Rule::CompatibilityRange,
            "metadata.compatibility.talos.version must be a string such as \">= v1.12.0\"".into(),
        ),
        None if policy.least_privilege => add(
            path,
            Rule::CompatibilityRange,
            "metadata.compatibility.talos.version is missing; state the Talos versions this works with".into(),
        ),
        None => {}
    }
}

const DEPENDENCY_KINDS: &[&str] = &["service", "path", "network", "time", "configuration"];
const NETWORK_STATUSES: &[&str] = &["addresses", "connectivity", "hostname", "etcfiles"];
const SPEC_FIELDS: &[&str] = &["name", "container", "depends", "restart", "logToConsole"];
const CONTAINER_FIELDS: &[&str] = &[
    "entrypoint",
    "environment",
    "environmentFile",
    "args",
    "mounts",
    "security",
];

/// Checks one service spec; returns its name when it is valid enough to identify.
fn check_service(
    path: &str,
    bytes: &[u8],
    tree: &Tree,
    policy: &Policy,
    add: &mut impl FnMut(&str, Rule, String),
) -> Option<String> {
    let doc = match parse_yaml(bytes) {
        Ok(v) => v,
        Err(e) => {
            add(path, Rule::ServiceSyntax, format!("not valid YAML: {e}"));
            return None;
        }
    };
    let Some(map) = doc.as_object() else {
        add(
            path,
            Rule::ServiceSyntax,
            "a service spec must be a mapping".into(),
        );
        return None;
    };
    for key in map.keys() {
        if !SPEC_FIELDS.contains(&key.as_str()) {
            add(
                path,
                Rule::ServiceField,
                format!(
                    "unknown field `{key}` (Talos ignores it silently; expected one of {})",
                    SPEC_FIELDS.join(", ")
                ),
            );
        }
    }
    let name = doc.get("name").and_then(Value::as_str).unwrap_or("");
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        add(
            path,
            Rule::ServiceName,
            format!("name `{name}` must match ^[-_a-z0-9]+$ (Talos skips the service)"),
        );
    }
    match doc.get("restart").and_then(Value::as_str) {
        Some("always" | "never" | "untilSuccess") => {}
        other => add(
            path,
            Rule::ServiceRestart,
            format!(
                "restart is {}; it must be one of always, never, untilSuccess",
                other
                    .map(|s| format!("`{s}`"))
                    .unwrap_or_else(|| "missing".into())
            ),
        ),
    }
    if let Some(v) = doc.get("logToConsole")
        && !v.is_boolean()
    {
        add(
            path,
            Rule::ServiceField,
            "logToConsole must be true or false".into(),
        );
    }
    let container = doc.get("container");
    if let Some(c) = container.and_then(Value::as_object) {
        for key in c.keys() {
            if !CONTAINER_FIELDS.contains(&key.as_str()) {
                add(
                    path,
                    Rule::ServiceField,
                    format!("unknown field `container.{key}`"),
                );
            }
        }
    } else {
        add(
            path,
            Rule::ServiceField,
            "container is missing or not a mapping".into(),
        );
    }
    for list in ["args", "environment"] {
        if let Some(v) = container.and_then(|c| c.get(list))
            && !v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            add(
                path,
                Rule::ServiceField,
                format!("container.{list} must be a list of strings"),
            );
        }
    }
    if let Some(env) = container
        .and_then(|c| c.get("environment"))
        .and_then(Value::as_array)
    {
        for e in env.iter().filter_map(Value::as_str) {
            if !e.contains('=') {
                add(
                    path,
                    Rule::ServiceField,
                    format!("container.environment entry `{e}` is not KEY=value"),
                );
            }
        }
    }
    check_mounts(path, container.and_then(|c| c.get("mounts")), add);
    if policy.least_privilege {
        for flag in ["writeableRootfs", "writeableSysfs"] {
            if container
                .and_then(|c| c.get("security"))
                .and_then(|s| s.get(flag))
                .and_then(Value::as_bool)
                == Some(true)
            {
                add(
                    path,
                    Rule::LeastPrivilege,
                    format!("container.security.{flag} is true; this service must not need it"),
                );
            }
        }
    }
    check_depends(path, doc.get("depends"), add);

    let entrypoint = container
        .and_then(|c| c.get("entrypoint"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if entrypoint.is_empty() {
        add(
            path,
            Rule::ServiceField,
            "container.entrypoint is missing or empty".into(),
        );
    } else if name_ok {
        check_entrypoint(path, name, entrypoint, tree, add);
    }
    name_ok.then(|| name.to_string())
}

fn check_mounts(path: &str, mounts: Option<&Value>, add: &mut impl FnMut(&str, Rule, String)) {
    let Some(mounts) = mounts else { return };
    let Some(list) = mounts.as_array() else {
        return add(
            path,
            Rule::ServiceField,
            "container.mounts must be a list".into(),
        );
    };
    for (i, m) in list.iter().enumerate() {
        for field in ["source", "destination"] {
            match m.get(field).and_then(Value::as_str) {
                Some(p) if p.starts_with('/') => {}
                _ => add(
                    path,
                    Rule::ServiceField,
                    format!("container.mounts[{i}].{field} must be an absolute path"),
                ),
            }
        }
        if let Some(o) = m.get("options")
            && !o.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            add(
                path,
                Rule::ServiceField,
                format!("container.mounts[{i}].options must be a list of strings"),
            );
        }
    }
}

fn check_depends(path: &str, depends: Option<&Value>, add: &mut impl FnMut(&str, Rule, String)) {
    let Some(depends) = depends else { return };
    let Some(list) = depends.as_array() else {
        return add(path, Rule::ServiceDepends, "depends must be a list".into());
    };
    for (i, dep) in list.iter().enumerate() {
        let Some(map) = dep.as_object() else {
            add(
                path,
                Rule::ServiceDepends,
                format!("depends[{i}] must be a mapping with one key"),
            );
            continue;
        };
        let mut set = 0;
        for (key, value) in map {
            match key.as_str() {
                "service" => match value.as_str() {
                    Some(s) if !s.is_empty() => set += 1,
                    _ => add(
                        path,
                        Rule::ServiceDepends,
                        format!("depends[{i}].service must name a service"),
                    ),
                },
                "path" => match value.as_str() {
                    Some(p) if p.starts_with('/') => set += 1,
                    Some(p) => {
                        set += 1;
                        add(
                            path,
                            Rule::ServiceDepends,
                            format!("depends[{i}].path `{p}` is not absolute"),
                        );
                    }
                    None => add(
                        path,
                        Rule::ServiceDepends,
                        format!("depends[{i}].path must be a string"),
                    ),
                },
                "network" => match value.as_array() {
                    Some(a) if !a.is_empty() => {
                        set += 1;
                        for s in a {
                            let s = s.as_str().unwrap_or("");
                            if !NETWORK_STATUSES.contains(&s) {
                                add(
                                    path,
                                    Rule::ServiceDepends,
                                    format!(
                                        "depends[{i}].network: `{s}` is not one of {}",
                                        NETWORK_STATUSES.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                    _ => add(
                        path,
                        Rule::ServiceDepends,
                        format!("depends[{i}].network must be a non-empty list"),
                    ),
                },
                "time" | "configuration" => match value.as_bool() {
                    Some(true) => set += 1,
                    Some(false) => {}
                    None => add(
                        path,
                        Rule::ServiceDepends,
                        format!("depends[{i}].{key} must be true"),
                    ),
                },
                other => add(
                    path,
                    Rule::ServiceDepends,
                    format!(
                        "depends[{i}]: unknown dependency kind `{other}` (expected one of {})",
                        DEPENDENCY_KINDS.join(", ")
                    ),
                ),
            }
        }
        if set == 0 {
            add(
                path,
                Rule::ServiceDepends,
                format!("depends[{i}] specifies no dependency"),
            );
        } else if set > 1 {
            add(
                path,
                Rule::ServiceDepends,
                format!(
                    "depends[{i}] sets {set} dependencies; each entry must hold exactly one (split it into several entries)"
                ),
            );
        }
    }
}

fn check_entrypoint(
    spec_path: &str,
    name: &str,
    entrypoint: &str,
    tree: &Tree,
    add: &mut impl FnMut(&str, Rule, String),
) {
    if entrypoint.split('/').any(|p| p == "..") {
        return add(
            spec_path,
            Rule::EntrypointMissing,
            format!("entrypoint `{entrypoint}` must not contain `..`"),
        );
    }
    let root = format!("{CONTAINERS_DIR}/{name}");
    let Some(rel) = normalise(entrypoint) else {
        return add(
            spec_path,
            Rule::EntrypointMissing,
            format!("entrypoint `{entrypoint}` names no file"),
        );
    };
    let target = format!("{root}/{rel}");
    match tree.get(&target) {
        None => add(
            &target,
            Rule::EntrypointMissing,
            format!(
                "entrypoint `{entrypoint}` of service `{name}` does not exist (it is relative to /usr/local/lib/containers/{name}/)"
            ),
        ),
        Some(entry) => match &entry.node {
            Node::File(bytes) => {
                if entry.mode & 0o111 == 0 {
                    add(
                        &target,
                        Rule::EntrypointNotExecutable,
                        format!("mode {:04o} has no execute bit", entry.mode),
                    );
                }
                match elf::classify(bytes) {
                    ElfKind::Static => {}
                    ElfKind::Dynamic(why) => add(
                        &target,
                        Rule::EntrypointNotStatic,
                        format!(
                            "dynamically linked: {why}; the service root holds no libraries, build it static (musl)"
                        ),
                    ),
                    ElfKind::NotElf(why) => add(
                        &target,
                        Rule::EntrypointNotStatic,
                        format!("not an executable ELF: {why}"),
                    ),
                }
            }
            Node::Symlink(to) => add(
                &target,
                Rule::EntrypointMissing,
                format!("entrypoint is a symlink to `{to}`; point the spec at the file itself"),
            ),
            _ => add(
                &target,
                Rule::EntrypointMissing,
                "entrypoint is not a regular file".into(),
            ),
        },
    }
}
