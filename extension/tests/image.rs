//! The extension image against the real OCI tools (umoci, skopeo) and our validator.

#![allow(clippy::unwrap_used)] // tests panic on unexpected errors by design

use std::path::{Path, PathBuf};
use std::process::Command;

use bootstrap_agent_extension::elf::synthetic_elf;
use bootstrap_agent_extension::image::{self, BuildInputs, BuildOutputs};
use bootstrap_agent_extension::oci;
use bootstrap_agent_extension::tree::{Node, Tree};
use bootstrap_agent_extension::validate::{self, Finding, Policy, Rule};

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or_default();
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed; run tests/install-deps.sh (Debian package `{name}`)")
    })
}

fn static_binary(dir: &Path) -> PathBuf {
    let path = dir.join("bootstrap-agent");
    std::fs::write(&path, synthetic_elf(false, false, true)).unwrap();
    path
}

fn build(dir: &Path, bundle: Option<PathBuf>) -> BuildOutputs {
    let inputs = BuildInputs {
        binary: static_binary(dir),
        bundle,
        version: image::VERSION.to_string(),
    };
    image::write_outputs(&inputs, &dir.join("out")).unwrap()
}

fn sample_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("artifacts")).unwrap();
    std::fs::write(bundle.join("bundle.lock.yaml"), "artifacts: []\n").unwrap();
    std::fs::write(bundle.join("artifacts/flux.yaml"), "kind: List\n").unwrap();
    bundle
}

fn all_findings(path: &Path, policy: &Policy) -> Vec<Finding> {
    validate::validate_path(path, policy)
        .unwrap()
        .into_iter()
        .flat_map(|r| r.findings)
        .collect()
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "{:?}: {}\n{}{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn umoci_and_skopeo_accept_the_image_and_the_unpacked_tree_validates() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = sample_bundle(dir.path());
    let built = build(dir.path(), Some(bundle));
    let image_ref = format!("{}:{}", built.layout.display(), built.tag);

    let unpacked = dir.path().join("unpacked");
    let out = run(Command::new(tool("umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(&image_ref)
        .arg(&unpacked));
    assert!(out.status.success(), "umoci unpack failed");
    let root = unpacked.join("rootfs");
    assert_eq!(all_findings(&root, &Policy::bootstrap_agent()), vec![]);
    // The umoci bundle directory itself is recognised too.
    assert_eq!(all_findings(&unpacked, &Policy::bootstrap_agent()), vec![]);
    // The bundle landed where the agent looks for it (/bundle inside the service root).
    assert!(
        root.join("rootfs/usr/local/lib/containers/bootstrap-agent/bundle/bundle.lock.yaml")
            .is_file()
    );

    let copied = dir.path().join("copied");
    let out = run(Command::new(tool("skopeo"))
        .args(["copy", "--quiet"])
        .arg(format!("oci:{image_ref}"))
        .arg(format!("dir:{}", copied.display())));
    assert!(out.status.success(), "skopeo copy oci: failed");
    assert!(copied.join("manifest.json").is_file());

    let copied2 = dir.path().join("copied-archive");
    let out = run(Command::new(tool("skopeo"))
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", built.archive.display()))
        .arg(format!("dir:{}", copied2.display())));
    assert!(out.status.success(), "skopeo copy oci-archive: failed");

    // Every output form validates too.
    for path in [&built.layout, &built.archive, &built.flat_tar] {
        assert_eq!(
            all_findings(path, &Policy::bootstrap_agent()),
            vec![],
            "{}",
            path.display()
        );
    }
}

fn layer_blob(layout: &Path) -> PathBuf {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(m)).unwrap())
            .unwrap();
    let l = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    layout.join("blobs/sha256").join(l)
}

#[test]
fn a_tampered_blob_fails_umoci_skopeo_and_the_validator() {
    let dir = tempfile::tempdir().unwrap();
    let built = build(dir.path(), None);
    let blob = layer_blob(&built.layout);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let image_ref = format!("{}:{}", built.layout.display(), built.tag);

    let out = run(Command::new(tool("umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(&image_ref)
        .arg(dir.path().join("unpacked")));
    assert!(!out.status.success(), "umoci unpacked a tampered image");

    let out = run(Command::new(tool("skopeo"))
        .args(["copy", "--quiet"])
        .arg(format!("oci:{image_ref}"))
        .arg(format!("dir:{}", dir.path().join("copied").display())));
    assert!(!out.status.success(), "skopeo copied a tampered image");

    let findings = all_findings(&built.layout, &Policy::bootstrap_agent());
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].rule, Rule::ImageStructure);
    assert!(
        findings[0]
            .path
            .ends_with(&blob.file_name().unwrap().to_string_lossy().to_string())
    );
    assert!(
        findings[0].message.contains("digest mismatch"),
        "{}",
        findings[0]
    );
}

#[test]
fn two_builds_give_the_same_digest_and_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let x = build(a.path(), Some(sample_bundle(a.path())));
    let y = build(b.path(), Some(sample_bundle(b.path())));
    assert_eq!(x.digest, y.digest);
    assert_eq!(
        std::fs::read(&x.archive).unwrap(),
        std::fs::read(&y.archive).unwrap()
    );
    assert_eq!(
        std::fs::read(&x.flat_tar).unwrap(),
        std::fs::read(&y.flat_tar).unwrap()
    );
    // A different input changes the digest (the check above is not vacuous).
    let c = tempfile::tempdir().unwrap();
    let z = build(c.path(), None);
    assert_ne!(x.digest, z.digest);
    // Rebuilding into the same directory replaces the layout cleanly.
    let again = build(a.path(), Some(sample_bundle(a.path())));
    assert_eq!(again.digest, x.digest);
}

fn good_tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    image::extension_tree(&BuildInputs {
        binary: static_binary(dir.path()),
        bundle: None,
        version: "0.1.0".into(),
    })
    .unwrap()
}

/// Writes `tree` as an OCI layout and validates it; also validates the same tree unpacked.
fn check_both_forms(tree: &Tree, policy: &Policy) -> Vec<Finding> {
    let dir = tempfile::tempdir().unwrap();
    let img = oci::build_image(tree, "bad", "0.0.0").unwrap();
    img.write_layout(&dir.path().join("oci")).unwrap();
    let from_image = all_findings(&dir.path().join("oci"), policy);
    let from_tree = validate::validate_tree(tree, policy);
    assert_eq!(
        from_image, from_tree,
        "layout and in-memory validation disagree"
    );
    from_tree
}

fn has(findings: &[Finding], path: &str, rule: Rule, text: &str) -> bool {
    findings
        .iter()
        .any(|f| f.path == path && f.rule == rule && f.message.contains(text))
}

#[test]
fn the_good_tree_passes() {
    assert_eq!(
        check_both_forms(&good_tree(), &Policy::bootstrap_agent()),
        vec![]
    );
    assert_eq!(check_both_forms(&good_tree(), &Policy::talos()), vec![]);
}

#[test]
fn extra_top_level_file_is_rejected() {
    let mut t = good_tree();
    t.add_file("README.md", b"hi".to_vec(), 0o644);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(
        has(
            &f,
            "README.md",
            Rule::TopLevel,
            "exactly manifest.yaml and rootfs/"
        ),
        "{f:?}"
    );
    assert_eq!(f.len(), 1, "{f:?}");
}

#[test]
fn world_writable_file_is_rejected() {
    let mut t = good_tree();
    t.add_file("rootfs/usr/local/share/notes.txt", b"x".to_vec(), 0o666);
    let f = check_both_forms(&t, &Policy::bootstrap_agent());
    assert!(
        has(
            &f,
            "rootfs/usr/local/share/notes.txt",
            Rule::WorldWritable,
            "0666"
        ),
        "{f:?}"
    );
    assert_eq!(f.len(), 1, "{f:?}");
}

#[test]
fn path_outside_usr_local_is_rejected() {
    let mut t = good_tree();
    t.add_file(
        "rootfs/etc/passwd",
        b"root:x:0:0::/:/bin/sh\n".to_vec(),
        0o644,
    );
    t.add_file("rootfs/lib/firmware/blob.bin", b"fw".to_vec(), 0o644);
    let ours = check_both_forms(&t, &Policy::bootstrap_agent());
    assert!(
        has(
            &ours,
            "rootfs/etc/passwd",
            Rule::AllowedPath,
            "/etc/passwd is outside"
        ),
        "{ours:?}"
    );
    assert!(
        has(
            &ours,
            "rootfs/lib/firmware/blob.bin",
            Rule::AllowedPath,
            "/usr/local"
        ),
        "{ours:?}"
    );
    // Talos rejects both too: /lib/firmware left its list before 1.12 (firmware goes to
    // /usr/lib/firmware), and /etc only holds /etc/cri/conf.d and the loader files.
    let talos = check_both_forms(&t, &Policy::talos());
    assert_eq!(talos.len(), 2, "{talos:?}");
    for path in ["rootfs/etc/passwd", "rootfs/lib/firmware/blob.bin"] {
        assert!(
            has(&talos, path, Rule::AllowedPath, "/usr/lib/firmware"),
            "{talos:?}"
        );
    }
}

/// Talos's list at the pinned version (pkg/machinery/extensions/extensions.go:11-35), compared
/// as Talos compares (validate.go:153-169): a plain string prefix.
#[test]
fn talos_allows_exactly_its_list_of_paths() {
    let mut t = good_tree();
    for allowed in [
        "rootfs/usr/lib/firmware/vendor/blob.bin",
        "rootfs/usr/lib/modules/6.18.0-talos/extra/x.ko",
        "rootfs/usr/lib/udev/rules.d/99-x.rules",
        "rootfs/etc/cri/conf.d/20-runtime.part",
        "rootfs/usr/bin/nvme",
        "rootfs/usr/lib/ld-linux-x86-64.so.2",
        "rootfs/etc/vulkan/icd.d/x.json",
        // String prefixes, as Talos compares them.
        "rootfs/etc/ld.so.conf.d/x.conf",
        "rootfs/usr/localextra/x",
    ] {
        t.add_file(allowed, b"x".to_vec(), 0o644);
    }
    assert_eq!(check_both_forms(&t, &Policy::talos()), vec![]);
    // Ours is stricter: /usr/local and below, component by component.
    let ours = check_both_forms(&t, &Policy::bootstrap_agent());
    assert!(
        has(
            &ours,
            "rootfs/usr/localextra/x",
            Rule::AllowedPath,
            "/usr/local"
        ),
        "{ours:?}"
    );
    assert_eq!(ours.len(), 9, "{ours:?}");

    let mut t = good_tree();
    for refused in [
        "rootfs/lib/firmware/x.bin",
        "rootfs/usr/lib/x.so",
        "rootfs/usr/bin/sh",
    ] {
        t.add_file(refused, b"x".to_vec(), 0o644);
    }
    let talos = check_both_forms(&t, &Policy::talos());
    assert_eq!(talos.len(), 3, "{talos:?}");
    assert!(
        talos.iter().all(|f| f.rule == Rule::AllowedPath),
        "{talos:?}"
    );
}

/// The list was read at the Talos version the image is built for.
#[test]
fn talos_allowed_paths_come_from_the_pinned_version() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-factory/versions.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let pinned = text
        .lines()
        .find_map(|l| l.strip_prefix("talos:"))
        .map(str::trim)
        .unwrap();
    assert_eq!(
        validate::TALOS_ALLOWED_PATHS_VERSION,
        pinned,
        "Talos is pinned to {pinned}: re-read AllowedPaths in its pkg/machinery/extensions/extensions.go and update TALOS_ALLOWED_PATHS"
    );
}

#[test]
fn wrong_manifest_version_is_rejected() {
    let mut t = good_tree();
    let m = image::manifest("0.1.0").replace("version: v1alpha1", "version: v1alpha2");
    t.add_file("manifest.yaml", m.into_bytes(), 0o644);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(
        has(&f, "manifest.yaml", Rule::ManifestVersion, "`v1alpha2`"),
        "{f:?}"
    );
    assert_eq!(f.len(), 1, "{f:?}");
}

fn replace_spec(t: &mut Tree, from: &str, to: &str) {
    let spec = image::SERVICE_SPEC.replace(from, to);
    assert_ne!(spec, image::SERVICE_SPEC, "`{from}` not in the spec");
    t.add_file(
        "rootfs/usr/local/etc/containers/bootstrap-agent.yaml",
        spec.into_bytes(),
        0o644,
    );
}

#[test]
fn bad_service_name_is_rejected() {
    let mut t = good_tree();
    replace_spec(&mut t, "name: bootstrap-agent", "name: Bootstrap.Agent");
    let f = check_both_forms(&t, &Policy::talos());
    let spec = "rootfs/usr/local/etc/containers/bootstrap-agent.yaml";
    assert!(has(&f, spec, Rule::ServiceName, "^[-_a-z0-9]+$"), "{f:?}");
    assert_eq!(f.len(), 1, "{f:?}");
    // Our policy additionally misses the bootstrap-agent service.
    let ours = check_both_forms(&t, &Policy::bootstrap_agent());
    assert!(
        ours.iter().any(|f| f.rule == Rule::ServiceMissing),
        "{ours:?}"
    );
}

#[test]
fn dynamic_entrypoint_is_rejected() {
    let mut t = good_tree();
    let bin = "rootfs/usr/local/lib/containers/bootstrap-agent/bootstrap-agent";
    t.add_file(bin, synthetic_elf(true, true, false), 0o755);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(
        has(&f, bin, Rule::EntrypointNotStatic, "ld-linux-x86-64.so.2"),
        "{f:?}"
    );
    assert_eq!(f.len(), 1, "{f:?}");
    // Shared libraries without an interpreter are just as fatal.
    t.add_file(bin, synthetic_elf(false, true, false), 0o755);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(
        has(&f, bin, Rule::EntrypointNotStatic, "DT_NEEDED"),
        "{f:?}"
    );
}

#[test]
fn missing_or_non_executable_entrypoint_is_rejected() {
    let mut t = good_tree();
    let bin = "rootfs/usr/local/lib/containers/bootstrap-agent/bootstrap-agent";
    t.add_file(bin, synthetic_elf(false, false, false), 0o644);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(has(&f, bin, Rule::EntrypointNotExecutable, "0644"), "{f:?}");
    t.entries.remove(bin);
    let f = check_both_forms(&t, &Policy::talos());
    assert!(
        has(
            &f,
            bin,
            Rule::EntrypointMissing,
            "relative to /usr/local/lib/containers/bootstrap-agent/"
        ),
        "{f:?}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let mut t = good_tree();
    t.add_file("extra", b"".to_vec(), 0o644);
    t.add_file("rootfs/opt/tool", b"".to_vec(), 0o777);
    let m = image::manifest("0.1.0")
        .replace("version: v1alpha1", "version: v2")
        .replace(">= v1.12.0", ">= 1.12");
    t.add_file("manifest.yaml", m.into_bytes(), 0o644);
    let spec = image::SERVICE_SPEC
        .replace("restart: untilSuccess", "restart: sometimes")
        .replace(
            "  - service: cri\n",
            "  - service: cri\n    time: true\n  - network: [wifi]\n",
        );
    t.add_file(
        "rootfs/usr/local/etc/containers/bootstrap-agent.yaml",
        spec.into_bytes(),
        0o644,
    );
    let f = check_both_forms(&t, &Policy::bootstrap_agent());
    let spec = "rootfs/usr/local/etc/containers/bootstrap-agent.yaml";
    assert!(has(&f, "extra", Rule::TopLevel, ""), "{f:?}");
    assert!(
        has(&f, "rootfs/opt/tool", Rule::WorldWritable, "0777"),
        "{f:?}"
    );
    assert!(
        has(&f, "rootfs/opt/tool", Rule::AllowedPath, "/opt/tool"),
        "{f:?}"
    );
    assert!(
        has(&f, "manifest.yaml", Rule::ManifestVersion, "`v2`"),
        "{f:?}"
    );
    assert!(
        has(
            &f,
            "manifest.yaml",
            Rule::CompatibilityRange,
            "MAJOR.MINOR.PATCH"
        ),
        "{f:?}"
    );
    assert!(has(&f, spec, Rule::ServiceRestart, "`sometimes`"), "{f:?}");
    assert!(has(&f, spec, Rule::ServiceDepends, "exactly one"), "{f:?}");
    assert!(has(&f, spec, Rule::ServiceDepends, "`wifi`"), "{f:?}");
    assert_eq!(f.len(), 8, "{f:?}");
}

#[test]
fn special_files_in_an_unpacked_tree_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ext");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let t = image::extension_tree(&BuildInputs {
        binary: static_binary(&bin),
        bundle: None,
        version: "0.1.0".into(),
    })
    .unwrap();
    std::fs::create_dir_all(&root).unwrap();
    for (path, entry) in &t.entries {
        let p = root.join(path);
        match &entry.node {
            Node::Dir => std::fs::create_dir_all(&p).unwrap(),
            Node::File(d) => {
                std::fs::write(&p, d).unwrap();
                std::fs::set_permissions(
                    &p,
                    std::os::unix::fs::PermissionsExt::from_mode(entry.mode),
                )
                .unwrap();
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(all_findings(&root, &Policy::bootstrap_agent()), vec![]);
    let fifo = root.join("rootfs/usr/local/share/pipe");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    assert!(
        Command::new(tool("mkfifo"))
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let f = all_findings(&root, &Policy::bootstrap_agent());
    assert!(
        has(&f, "rootfs/usr/local/share/pipe", Rule::SpecialFile, "FIFO"),
        "{f:?}"
    );
}

#[test]
fn the_cli_reports_findings_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_bootstrap-agent-extension");
    let out = run(Command::new(exe)
        .arg("build")
        .arg("--binary")
        .arg(static_binary(dir.path()))
        .arg("--out")
        .arg(dir.path().join("out")));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("digest:   sha256:"));

    let layout = dir.path().join("out/oci");
    let out = run(Command::new(exe).arg("validate").arg(&layout));
    assert!(out.status.success());

    let blob = layer_blob(&layout);
    std::fs::write(&blob, b"tampered").unwrap();
    let out = run(Command::new(exe).arg("validate").arg(&layout));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[image-structure]"));

    // A dynamic binary is refused at build time, before anything is published.
    let dynamic = dir.path().join("dynamic");
    std::fs::write(&dynamic, synthetic_elf(true, false, false)).unwrap();
    let out = run(Command::new(exe)
        .arg("build")
        .arg("--binary")
        .arg(&dynamic)
        .arg("--out")
        .arg(dir.path().join("out2")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[entrypoint-not-static]"));

    let out = run(Command::new(exe)
        .arg("validate")
        .arg(dir.path().join("nope")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

/// With the real static agent (`make build` first): `cargo nextest run -p
/// bootstrap-agent-extension --run-ignored only`.
#[test]
#[ignore = "needs the musl release agent from `make build`"]
fn the_real_agent_builds_into_a_valid_image() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let binary = target.join("x86_64-unknown-linux-musl/release/bootstrap-agent");
    assert!(
        binary.is_file(),
        "{} is missing: run `make build` first",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let built = image::write_outputs(
        &BuildInputs {
            binary,
            bundle: None,
            version: image::VERSION.into(),
        },
        &dir.path().join("out"),
    )
    .unwrap();
    assert_eq!(
        all_findings(&built.layout, &Policy::bootstrap_agent()),
        vec![]
    );
}

fn compile(dir: &Path, compiler: &str, flags: &[&str], name: &str) -> PathBuf {
    let src = dir.join("hello.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\nint main(void){puts(\"hello from the extension\");return 0;}\n",
    )
    .unwrap();
    let out = dir.join(name);
    let status = Command::new(tool(compiler))
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success(), "{compiler} {flags:?} failed");
    out
}

#[test]
fn real_static_and_dynamic_binaries_are_told_apart_and_the_static_one_runs_from_the_image() {
    use bootstrap_agent_extension::elf::{ElfKind, classify};
    let dir = tempfile::tempdir().unwrap();
    let musl_static = compile(dir.path(), "musl-gcc", &["-static"], "static");
    // A true static-pie (self-relocating, PT_DYNAMIC without DT_NEEDED), like Rust's musl target.
    let static_pie = compile(dir.path(), "gcc", &["-static-pie", "-fPIE"], "static-pie");
    // Debian's musl-gcc ignores -static-pie and links against the musl loader: dynamic.
    let musl_pie = compile(
        dir.path(),
        "musl-gcc",
        &["-static-pie", "-fPIE"],
        "musl-pie",
    );
    let glibc = compile(dir.path(), "gcc", &[], "dynamic");
    assert_eq!(
        classify(&std::fs::read(&musl_static).unwrap()),
        ElfKind::Static
    );
    assert_eq!(
        classify(&std::fs::read(&static_pie).unwrap()),
        ElfKind::Static
    );
    assert!(
        matches!(classify(&std::fs::read(&musl_pie).unwrap()), ElfKind::Dynamic(m) if m.contains("ld-musl")),
        "musl-gcc -static-pie output has an interpreter"
    );
    assert!(matches!(
        classify(&std::fs::read(&glibc).unwrap()),
        ElfKind::Dynamic(_)
    ));

    // Build with the real static binary, unpack with umoci, run the entrypoint from the tree.
    let built = image::write_outputs(
        &BuildInputs {
            binary: musl_static,
            bundle: None,
            version: image::VERSION.into(),
        },
        &dir.path().join("out"),
    )
    .unwrap();
    let unpacked = dir.path().join("unpacked");
    let out = run(Command::new(tool("umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{}", built.layout.display(), built.tag))
        .arg(&unpacked));
    assert!(out.status.success());
    let entry =
        unpacked.join("rootfs/rootfs/usr/local/lib/containers/bootstrap-agent/bootstrap-agent");
    let out = run(&mut Command::new(&entry));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the extension\n"
    );

    // And the dynamic one is refused by the builder's validation (through the CLI).
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_bootstrap-agent-extension"))
            .arg("build")
            .arg("--binary")
            .arg(&glibc)
            .arg("--out")
            .arg(dir.path().join("out-dynamic")),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[entrypoint-not-static]"));
}
