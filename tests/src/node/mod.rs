//! A node without the hardware, for whole-node rehearsals of the agent.
//!
//! - a real swtpm (TCP on 127.0.0.1), kept across reboots and reflashes as a vTPM's state is;
//! - the Talos API stand-in on a Unix socket (machined), whose `Kubeconfig` serves the
//!   API server's admin kubeconfig and whose `Read` serves the node's host root (so that
//!   `bootstrap-agent status` reads the status file over mTLS, as from an operator machine);
//! - a real kube-apiserver and etcd ([`crate::envtest`]), TLS with a throwaway cluster CA and
//!   an admin client certificate, as a Talos control plane serves them;
//! - a controllers simulator ([`controllers`]);
//! - a bundle directory composed from the upstream fixtures;
//! - the real `bootstrap-agent` binary, run as Talos runs the extension service: the
//!   entrypoint, args and environment of `extension/bootstrap-agent.yaml`, its paths mapped
//!   under a temporary host root, restarted per its `restart` policy ([`service`]).
//!
//! ```no_run
//! # async fn demo() {
//! use bootstrap_agent_tests::node::{Node, NodeOptions};
//! let node = Node::start(NodeOptions::default()).await;
//! node.write_config(None);
//! let report = node.service().wait(std::time::Duration::from_secs(60)).await;
//! # }
//! ```

// Test support: a broken environment is reported by a panic with a clear message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod controllers;
pub mod service;
pub mod spec;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bootstrap_agent::plan::StepId;
use bootstrap_agent::status::{Phase, Status, StepState};
use tempfile::TempDir;

use crate::envtest::ApiServer;
use crate::kubeapi::ObjectRef;
use crate::kubeapi::fixture::{Corpus, compose_bundle};
use crate::swtpm::{Swtpm, TEST_FACTOR, agent_binary};
use crate::talos::StandIn;
pub use controllers::{COMPONENTS_REVISION, ControllerDelays, Controllers, Git, REVISION};
pub use service::{Exit, Launch, Service, ServiceReport, TALOS_RESTART_INTERVAL};
pub use spec::{Restart, ServiceSpec, host_path};

/// Where the agent writes its status on the node (the spec's mount and the agent's default).
pub const STATUS_PATH: &str = "/var/lib/bootstrap-agent/status.json";
/// The Git source the rehearsal's Flux syncs from (never contacted: the controllers are
/// simulated).
pub const FLUX_URL: &str = "https://github.com/example/homelab";

/// The service's root filesystem on a Talos node (the entrypoint is relative to it).
pub const CONTAINER_ROOT: &str = "/usr/local/lib/containers/bootstrap-agent";

/// Runs this agent binary instead of the workspace's build (e.g. the static release build).
pub const AGENT_BIN_ENV: &str = "BOOTSTRAP_AGENT_BIN";

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Include the Gateway API CRDs (the full upstream corpus).
    pub gateway_api: bool,
    /// The first `n` `Bootstrap` calls answer FailedPrecondition.
    pub bootstrap_not_ready: usize,
    pub delays: ControllerDelays,
    /// `BOOTSTRAP_AGENT_RETRY_MAX` for the agent.
    pub retry_max: String,
    /// Starts of the service before the supervisor gives up (untilSuccess restarts otherwise
    /// forever, as Talos does).
    pub max_starts: usize,
    /// Pause before a restart: Talos's 5 s by default.
    pub restart_interval: Duration,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            gateway_api: false,
            bootstrap_not_ready: 0,
            delays: ControllerDelays::default(),
            retry_max: "1s".into(),
            max_starts: 20,
            restart_interval: TALOS_RESTART_INTERVAL,
        }
    }
}

/// The node: TPM, Talos API, Kubernetes API, controllers, host root and bundle.
pub struct Node {
    pub tpm: Swtpm,
    pub talos: StandIn,
    pub kube: Arc<ApiServer>,
    pub controllers: Controllers,
    pub options: NodeOptions,
    pub spec: ServiceSpec,
    /// The agent binary the service runs.
    pub agent: PathBuf,
    root: TempDir,
    bundle: TempDir,
    work: TempDir,
}

/// What Git holds for the simulated Flux: the sync objects as `kubernetes/flux-system` has them
/// (the same values the agent applies), the Kustomization of Flux's components, and the
/// components themselves (the bundle's: one Flux).
fn git(bundle: &Path) -> Git {
    let components = bootstrap_agent::bundle::Bundle::load_dir(bundle)
        .map(|b| b.flux.iter().map(|m| m.object()).collect())
        .unwrap_or_default();
    let mut flux_system =
        bootstrap_agent::kube::FluxSync::new(FLUX_URL, "main", "./kubernetes/flux-system")
            .objects();
    flux_system.push(serde_json::json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
        "metadata": {"name": "flux-components", "namespace": "flux-system"},
        "spec": {"interval": "1h0m0s", "url": "oci://ghcr.io/fluxcd/flux-manifests", "ref": {"tag": "v2.9.4"}}}));
    flux_system.push(
        serde_json::json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
        "metadata": {"name": "flux-components", "namespace": "flux-system"},
        "spec": {"interval": "1h0m0s", "path": "./", "prune": true,
            "sourceRef": {"kind": "OCIRepository", "name": "flux-components"}}}),
    );
    Git {
        flux_system,
        components,
    }
}

async fn cluster(
    options: &NodeOptions,
    root: &Path,
    bundle: &Path,
) -> (StandIn, Arc<ApiServer>, Controllers) {
    let kube = Arc::new(ApiServer::start().await);
    let talos = StandIn::builder()
        .kubeconfig(&kube.kubeconfig())
        .bootstrap_not_ready(options.bootstrap_not_ready)
        .root(root)
        .start()
        .await;
    let controllers = Controllers::start(kube.clone(), options.delays, git(bundle));
    (talos, kube, controllers)
}

impl Node {
    /// A freshly flashed node: empty TPM, etcd not bootstrapped, empty cluster, empty /var.
    pub async fn start(options: NodeOptions) -> Node {
        let agent = match std::env::var_os(AGENT_BIN_ENV) {
            Some(p) => {
                let p = PathBuf::from(p);
                assert!(p.is_file(), "{AGENT_BIN_ENV}={} is not a file", p.display());
                p
            }
            None => agent_binary()
                .unwrap_or_else(|e| panic!("the rehearsal runs the real agent binary: {e}")),
        };
        let spec = ServiceSpec::load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            spec.restart,
            Restart::UntilSuccess,
            "the rehearsal assumes restart: untilSuccess"
        );
        check_efivars_mounts(&spec);
        let tpm = Swtpm::start().expect("start swtpm (install swtpm: tests/install-deps.sh)");
        let root = tempfile::Builder::new()
            .prefix("node-root")
            .tempdir()
            .expect("host root");
        let bundle = tempfile::Builder::new()
            .prefix("node-bundle")
            .tempdir()
            .expect("bundle dir");
        compose_bundle(
            bundle.path(),
            Corpus {
                gateway_api: options.gateway_api,
            },
        );
        let work = tempfile::tempdir().expect("work dir");
        let (talos, kube, controllers) = cluster(&options, root.path(), bundle.path()).await;
        let node = Node {
            tpm,
            talos,
            kube,
            controllers,
            options,
            spec,
            agent,
            root,
            bundle,
            work,
        };
        node.prepare_mounts();
        node.firmware(true, false);
        node
    }

    /// The firmware's SecureBoot state as efivarfs shows it on the host, at the sources the
    /// service spec mounts (the agent reads them there in the rehearsal: paths are not mapped
    /// into a container). SecureBoot on, user mode, unless a test says otherwise.
    pub fn firmware(&self, secure_boot: bool, setup_mode: bool) {
        bootstrap_agent::secureboot::write_fake(&self.efivars_dir(), secure_boot, setup_mode)
            .expect("fake efivars");
    }

    /// Where the host's efivarfs is under the host root.
    pub fn efivars_dir(&self) -> PathBuf {
        host_path(self.root(), bootstrap_agent::secureboot::KERNEL_EFIVARS)
    }

    /// Talos creates a missing bind-mount source directory (mode 0700) before starting the
    /// service; do the same for the directories the spec mounts from the host's /var.
    fn prepare_mounts(&self) {
        use std::os::unix::fs::PermissionsExt;
        for m in &self.spec.mounts {
            if m.source.starts_with("/var/") {
                let dir = host_path(self.root.path(), &m.source);
                if !dir.exists() {
                    std::fs::create_dir_all(&dir).expect("mount source");
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                        .expect("mount source mode");
                }
            }
        }
    }

    /// The node's host root (`/` of the node).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A scratch directory for the test (operator files: keys, talosconfig).
    pub fn work(&self) -> &Path {
        self.work.path()
    }

    pub fn bundle_dir(&self) -> &Path {
        self.bundle.path()
    }

    /// Where the service's configuration file is on the host.
    pub fn config_path(&self) -> PathBuf {
        let inside = self
            .spec
            .config_path()
            .expect("the service spec passes --config");
        host_path(self.root(), inside)
    }

    /// The status file on the host.
    pub fn status_path(&self) -> PathBuf {
        host_path(self.root(), STATUS_PATH)
    }

    /// The agent's configuration for this node. Before the SOPS key is sealed (`None`): the
    /// key factor, no recipient, and the simulator's socket without a pinned salt key
    /// (`insecureTransport`, as nothing is known yet). Once sealed: the sealed key, and the
    /// recipient and salt key name the operator pins, as Terraform writes them.
    pub fn config_text(&self, sealed: Option<&Sealed>) -> String {
        let mut secret =
            "  - namespace: flux-system\n    name: sops-age\n    key: age.agekey\n".to_string();
        let pins = match sealed {
            Some(s) => {
                secret.push_str("    sealed: |\n");
                for line in s.armor.trim_end().lines() {
                    secret.push_str("      ");
                    secret.push_str(line);
                    secret.push('\n');
                }
                format!(
                    "  recipient: {}\n  saltKeyName: {}\n",
                    s.recipient, s.salt_key_name
                )
            }
            None => "  insecureTransport: true\n".to_string(),
        };
        format!(
            "talos:\n  socket: {socket}\n  bootstrapEtcd: true\ntpm:\n  device: {tpm}\n  pcrs: [7]\n  lockPcr: 15\n  factor: {TEST_FACTOR}\n  efivars: {efivars}\n{pins}secrets:\n{secret}bundle:\n  dir: {bundle}\nflux:\n  url: {FLUX_URL}\n  branch: main\n  path: ./kubernetes/flux-system\nstatus: {STATUS_PATH}\n",
            socket = self.talos.socket_path().display(),
            tpm = self.tpm.address(),
            efivars = self.efivars_dir().display(),
            bundle = self.bundle_dir().display(),
        )
    }

    /// Writes the configuration (as Talos mounts the ExtensionServiceConfig file).
    pub fn write_config(&self, sealed: Option<&Sealed>) {
        self.write_config_text(&self.config_text(sealed));
    }

    pub fn write_config_text(&self, text: &str) {
        let path = self.config_path();
        std::fs::create_dir_all(path.parent().expect("config dir")).expect("config dir");
        std::fs::write(&path, text).expect("write config");
    }

    /// The environment of the service: the spec's, then the harness's mappings.
    pub fn service_env(&self) -> Vec<(String, String)> {
        let mut env = self.spec.environment.clone();
        env.push((
            "BOOTSTRAP_AGENT_STATUS".into(),
            self.status_path().display().to_string(),
        ));
        env.push((
            "BOOTSTRAP_AGENT_RETRY_MAX".into(),
            self.options.retry_max.clone(),
        ));
        env.push(("RUST_LOG".into(), "info".into()));
        env.push(("PATH".into(), "/usr/bin:/bin".into()));
        // Temporary files, if the agent ever wrote any, land on the scanned host root.
        let tmp = host_path(self.root(), "/tmp");
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        env.push(("TMPDIR".into(), tmp.display().to_string()));
        env
    }

    /// Starts the agent service as Talos would.
    pub fn service(&self) -> Service {
        self.service_with(self.options.max_starts)
    }

    /// Starts the agent service, giving up after `max_starts` starts.
    pub fn service_with(&self, max_starts: usize) -> Service {
        // The service's own root (where Talos puts the entrypoint), under the host root so that
        // anything the agent writes relative to it is found by the scans of the host root.
        let cwd = host_path(self.root(), CONTAINER_ROOT);
        std::fs::create_dir_all(&cwd).expect("container root");
        Service::start(Launch {
            cwd,
            program: self.agent.clone(),
            args: self.spec.mapped_args(self.root()),
            env: self.service_env(),
            restart: self.spec.restart,
            restart_interval: self.options.restart_interval,
            max_starts,
        })
    }

    /// The status document, when there is one.
    pub fn status(&self) -> Option<Status> {
        let bytes = std::fs::read(self.status_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Polls the status file until `pred` holds; panics (with the last status) after `timeout`.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && pred(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "status did not reach `{what}` within {timeout:?}; last status:\n{}",
                    self.status()
                        .map(|s| s.render())
                        .unwrap_or_else(|| "(none)".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts the service and waits until the agent has recorded a failure and, instead of
    /// exiting (which `untilSuccess` would answer with a restart every 5 s), waits for its
    /// configuration to change. Returns the running service and the status.
    pub async fn service_until_failed(&self, timeout: Duration) -> (Service, Status) {
        let service = self.service();
        let deadline = Instant::now() + timeout;
        while !service
            .log()
            .contains("waiting for the configuration to change")
        {
            assert!(
                Instant::now() < deadline && service.exits().is_empty(),
                "the agent did not settle on a failure within {timeout:?}; exits {:?}; log:\n{}",
                service.exits(),
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = self.status().expect("status written on a failure");
        assert_eq!(status.phase, Phase::Failed, "{}", status.render());
        (service, status)
    }

    /// Waits until the agent waits for the operator; returns what it shows: the TPM's recipient
    /// and salt key name.
    pub async fn wait_for_enrolment(&self, timeout: Duration) -> Enrolment {
        let s = self
            .wait_status(timeout, "waiting with a recipient", |s| {
                s.phase == Phase::Waiting && s.tpm.is_some()
            })
            .await;
        let tpm = s.tpm.expect("tpm record");
        Enrolment {
            recipient: tpm.recipient,
            salt_key_name: tpm
                .salt_key_name
                .expect("the status shows the salt key name to pin"),
        }
    }

    /// A reboot without reflash: the TPM's PCRs reset (NV kept) and the firmware starts it up
    /// (TPM2_Startup CLEAR) as on real hardware; /var and the cluster stay.
    pub fn reboot(&self) {
        self.tpm.reboot().expect("swtpm reboot");
        let out = self
            .tpm
            .tpm2("tpm2_startup", &["-c"])
            .expect("tpm2_startup");
        assert!(
            out.status.success(),
            "tpm2_startup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A rebuild by reflash: the TPM state is kept (and the machine reboots), /var is wiped,
    /// and the cluster is new: etcd not bootstrapped, an empty Kubernetes API.
    pub async fn reflash(&mut self) {
        self.reboot();
        let var = self.root().join("var");
        if var.exists() {
            std::fs::remove_dir_all(&var).expect("wipe /var");
        }
        let (talos, kube, controllers) =
            cluster(&self.options, self.root.path(), self.bundle.path()).await;
        // Old stand-ins stop serving when dropped.
        self.controllers = controllers;
        self.talos = talos;
        self.kube = kube;
        self.prepare_mounts();
        // The configuration refers to the new socket.
        if let Ok(text) = std::fs::read_to_string(self.config_path())
            && let Some(old) = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("socket: "))
                .map(str::to_string)
        {
            self.write_config_text(
                &text.replace(&old, &self.talos.socket_path().display().to_string()),
            );
        }
    }

    /// Runs `bootstrap-agent ARGS` (operator side or offline commands).
    pub fn agent(&self, args: &[&str]) -> Output {
        Command::new(&self.agent)
            .args(args)
            .output()
            .expect("run bootstrap-agent")
    }

    /// `bootstrap-agent status` through the Talos API stand-in, over mTLS with an `os:admin`
    /// talosconfig, reading the node's status file.
    pub fn status_command(&self, extra: &[&str]) -> Output {
        let talosconfig = self.talos.write_talosconfig(self.work());
        let tc = talosconfig.display().to_string();
        let mut args = vec!["status", "--talosconfig", tc.as_str()];
        args.extend_from_slice(extra);
        self.agent(&args)
    }

    /// `tpm2_pcrread sha256:N`, as hex.
    pub fn pcr(&self, pcr: u32) -> String {
        let out = self
            .tpm
            .tpm2("tpm2_pcrread", &[&format!("sha256:{pcr}")])
            .expect("tpm2_pcrread");
        assert!(
            out.status.success(),
            "tpm2_pcrread: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{pcr} :"))
                    .or_else(|| l.trim().strip_prefix(&format!("{pcr}:")))
            })
            .map(|v| v.trim().trim_start_matches("0x").to_ascii_lowercase())
            .unwrap_or_else(|| panic!("PCR {pcr} not in tpm2_pcrread output: {text}"))
    }

    /// Extends PCR `pcr` with a measurement, as firmware would.
    pub fn extend_pcr(&self, pcr: u32, byte: &str) {
        let out = self
            .tpm
            .tpm2(
                "tpm2_pcrextend",
                &[&format!("{pcr}:sha256={}", byte.repeat(32))],
            )
            .expect("tpm2_pcrextend");
        assert!(
            out.status.success(),
            "tpm2_pcrextend: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The step records' states, for messages.
    pub fn steps(&self) -> Vec<(StepId, StepState)> {
        self.status()
            .map(|s| s.steps.iter().map(|r| (r.step, r.state)).collect())
            .unwrap_or_default()
    }

    /// The `flux-system/sops-age` Secret's `age.agekey`, decoded.
    pub async fn sops_age(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let s = self
            .kube
            .get(&ObjectRef::new("", "secrets", "flux-system", "sops-age"))
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(s["data"]["age.agekey"].as_str()?)
            .ok()
    }
}

/// The spec gives the agent the firmware's SecureBoot state where it reads it by default: the
/// two variables of efivarfs, read-only, at `/run/efivars` (the container's `/sys/firmware` is
/// masked by containerd's default spec, and `/run` is a tmpfs where the mount points can be
/// created; see `extension/bootstrap-agent.yaml`).
fn check_efivars_mounts(spec: &ServiceSpec) {
    use bootstrap_agent::secureboot::{KERNEL_EFIVARS, SERVICE_EFIVARS, variable_file};
    for name in ["SecureBoot", "SetupMode"] {
        let inside = variable_file(Path::new(SERVICE_EFIVARS), name);
        let inside = inside.display().to_string();
        let mount = spec
            .mount_at(&inside)
            .unwrap_or_else(|| panic!("the service spec does not mount {inside}"));
        assert_eq!(
            Path::new(&mount.source),
            variable_file(Path::new(KERNEL_EFIVARS), name),
            "{inside}: mounted from another source"
        );
        assert!(
            mount.options.iter().any(|o| o == "ro"),
            "{inside} must be mounted read-only: {:?}",
            mount.options
        );
    }
}

/// What the first boot shows the operator: the TPM's recipient and salt key name (public).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub recipient: String,
    pub salt_key_name: String,
}

/// What the operator did at first boot: the SOPS key and its sealed form, and the pins.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The whole `age-keygen` key file (comment lines and the identity line).
    pub key_file: String,
    /// The armored age file sealed to the TPM's recipient.
    pub armor: String,
    pub recipient: String,
    pub salt_key_name: String,
}

impl Node {
    /// Operator side without a waiting agent: `bootstrap-agent tpm enroll` on the node's TPM
    /// (with the configuration's key factor), `age-keygen`, `age -a -r RECIPIENT`, and the
    /// sealed key and the pins in the configuration. Enrolling does not lock the seed: the
    /// agent started next unseals it in this boot.
    pub fn enrol_and_seal(&self) -> Sealed {
        let factor = self.tpm.factor_file();
        let efivars = self.efivars_dir();
        let out = self.agent(&[
            "tpm",
            "enroll",
            "--tpm",
            &self.tpm.address(),
            "--insecure-transport",
            "--factor-file",
            &factor.display().to_string(),
            "--efivars",
            &efivars.display().to_string(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tpm enroll: {err}");
        let enrolment = Enrolment {
            recipient: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            salt_key_name: err
                .lines()
                .find_map(|l| l.strip_prefix("salt key name: "))
                .expect("tpm enroll prints the salt key name")
                .trim()
                .to_string(),
        };
        let sealed = self.seal_to(&enrolment);
        self.write_config(Some(&sealed));
        sealed
    }

    /// Generates a SOPS key with `age-keygen` and seals it to the enrolment's recipient with
    /// `age`.
    pub fn seal_to(&self, enrolment: &Enrolment) -> Sealed {
        let key_path = self.work().join(".age-key.txt");
        let _ = std::fs::remove_file(&key_path);
        let key_file = age_keygen(&key_path);
        let armor = age_seal(&enrolment.recipient, &key_path);
        Sealed {
            key_file,
            armor,
            recipient: enrolment.recipient.clone(),
            salt_key_name: enrolment.salt_key_name.clone(),
        }
    }

    /// Scenario "first boot on a fresh TPM": the agent enrols, locks the seed and waits with
    /// the recipient and salt key name in its status; the operator seals a new key to it and
    /// pins both in the configuration; the node reboots (the seed is locked until then: the
    /// apply that delivers the sealed key reboots the node) and the agent runs to Flux Ready.
    /// Returns the sealed key and the reports of both services (waiting, then ready).
    pub async fn first_boot(&self, timeout: Duration) -> (Sealed, ServiceReport, ServiceReport) {
        self.write_config(None);
        let waiting = self.service();
        let enrolment = self.wait_for_enrolment(timeout).await;
        let sealed = self.seal_to(&enrolment);
        let waited = waiting.stop().await;
        self.write_config(Some(&sealed));
        self.reboot();
        let ready = self.service().wait(timeout).await;
        assert_eq!(
            ready.last().and_then(|e| e.code),
            Some(0),
            "the agent did not reach Ready after sealing; log:\n{}",
            ready.log
        );
        (sealed, waited, ready)
    }
}

/// Operator side: `age-keygen -o PATH`; returns the key file's text.
pub fn age_keygen(path: &Path) -> String {
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .expect("run age-keygen (install age: tests/install-deps.sh)");
    assert!(
        out.status.success(),
        "age-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path).expect("read the generated key")
}

/// Operator side: `age -a -r RECIPIENT FILE`; returns the armor.
pub fn age_seal(recipient: &str, file: &Path) -> String {
    let out = Command::new("age")
        .args(["-a", "-r", recipient])
        .arg(file)
        .output()
        .expect("run age (install age: tests/install-deps.sh)");
    assert!(
        out.status.success(),
        "age: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("armor is text")
}

/// The `AGE-SECRET-KEY-1...` line of an age key file.
pub fn key_line(key_file: &str) -> String {
    key_file
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .expect("an identity line")
        .to_string()
}
