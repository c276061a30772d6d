//! A real Kubernetes API server for tests: `etcd` and `kube-apiserver` started on free loopback
//! ports with a throwaway CA, the way controller-runtime's envtest does it. The binaries come
//! from `$KUBEBUILDER_ASSETS` when it is set, else from `../shared/envtest/` beside the
//! repository.
//!
//! The API server is the reference the agent is tested against: what it sends (explicit
//! `null`s, watch-list bookmarks, managedFields, its own conflict and status answers) is what a
//! Talos node's API server sends. Its audit log counts what each client sent (see [`audit`]);
//! the agent connects as user `bootstrap-agent`, the test as `envtest-admin`, both cluster
//! admins. The processes can be killed and restarted mid-test ([`ApiServer::kill_apiserver`],
//! [`ApiServer::restart_etcd`]). No controllers run: tests play them by writing `/status`.

pub mod audit;
pub mod kustomize_controller;
pub mod objects;
pub mod pki;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;

pub use objects::managers;
use pki::{Identity, Pki};

/// The user the agent connects as.
pub const AGENT_USER: &str = "bootstrap-agent";
/// The user the test itself connects as (seeding objects, playing controllers).
pub const ADMIN_USER: &str = "envtest-admin";

/// The folder holding `kube-apiserver` and `etcd`.
pub fn assets() -> PathBuf {
    let dir = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/envtest"),
    };
    for bin in ["kube-apiserver", "etcd"] {
        let p = dir.join(bin);
        assert!(
            p.is_file(),
            "{} is missing: the real-API-server tests need kube-apiserver and etcd; set \
             KUBEBUILDER_ASSETS to a folder holding both (as for controller-runtime's envtest, \
             e.g. from `setup-envtest use -p path`), or put them in ../shared/envtest beside \
             the repository",
            p.display()
        );
    }
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One etcd + kube-apiserver pair, torn down on drop.
pub struct ApiServer {
    dir: tempfile::TempDir,
    assets: PathBuf,
    pki: Pki,
    pub api_port: u16,
    etcd_port: u16,
    peer_port: u16,
    etcd: Mutex<Option<Child>>,
    apiserver: Mutex<Option<Child>>,
    agent: Identity,
    admin: Identity,
    markers: AtomicU64,
    /// Where [`ApiServer::agent_requests`] starts counting (see [`ApiServer::reset_counts`]).
    since: std::sync::atomic::AtomicUsize,
    client: kube::Client,
}

impl ApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers `ok`.
    pub async fn start() -> ApiServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let assets = assets();
        let dir = tempfile::Builder::new()
            .prefix("envtest-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let pki = Pki::generate().unwrap_or_else(|e| panic!("test PKI: {e}"));
        let agent = pki
            .client(AGENT_USER, &["system:masters"])
            .unwrap_or_else(|e| panic!("client certificate: {e}"));
        let admin = pki
            .client(ADMIN_USER, &["system:masters"])
            .unwrap_or_else(|e| panic!("client certificate: {e}"));
        let files = [
            ("ca.crt", pki.ca_pem.as_str()),
            ("serving.crt", pki.serving_cert_pem.as_str()),
            ("serving.key", pki.serving_key_pem.as_str()),
            ("sa.pub", pki.sa_public_pem.as_str()),
            ("sa.key", pki.sa_private_pem.as_str()),
            ("audit-policy.yaml", audit::POLICY),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text)
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
        let api_port = free_port();
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&kubeconfig_text(api_port, &pki.ca_pem, &admin))
                .unwrap_or_else(|e| panic!("admin kubeconfig: {e}")),
            &Default::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("admin kubeconfig: {e}"));
        let mut config = config;
        config.default_retry = false;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        let client = kube::Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"));
        let server = ApiServer {
            dir,
            assets,
            pki,
            api_port,
            etcd_port: free_port(),
            peer_port: free_port(),
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            agent,
            admin,
            markers: AtomicU64::new(0),
            since: std::sync::atomic::AtomicUsize::new(0),
            client,
        };
        std::fs::write(server.path("agent.kubeconfig"), server.kubeconfig())
            .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
        std::fs::write(server.path("admin.kubeconfig"), server.admin_kubeconfig())
            .unwrap_or_else(|e| panic!("write kubeconfig: {e}"));
        server.start_etcd();
        server.start_apiserver().await;
        server
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The cluster CA (PEM) the kubeconfigs trust.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The agent's kubeconfig (user `bootstrap-agent`, cluster admin), as Talos would give it.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_text(self.api_port, &self.pki.ca_pem, &self.agent)
    }

    /// The test's own kubeconfig (user `envtest-admin`).
    pub fn admin_kubeconfig(&self) -> String {
        kubeconfig_text(self.api_port, &self.pki.ca_pem, &self.admin)
    }

    /// The agent's kubeconfig as a file (for `kubernetes: { kubeconfig: … }`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.path("agent.kubeconfig")
    }

    /// The test's kubeconfig as a file (for kubectl).
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        self.path("admin.kubeconfig")
    }

    /// A client for the test (user `envtest-admin`), without hidden retries.
    pub fn admin(&self) -> kube::Client {
        self.client.clone()
    }

    /// Starts (or restarts) etcd on its ports, with its data kept across restarts.
    pub fn start_etcd(&self) {
        let log = self.log_file("etcd.log");
        let child = Command::new(self.assets.join("etcd"))
            .args([
                "--name=envtest".to_string(),
                format!("--data-dir={}", self.path("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{}", self.etcd_port),
                format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    self.etcd_port
                ),
                format!("--listen-peer-urls=http://127.0.0.1:{}", self.peer_port),
                format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    self.peer_port
                ),
                format!(
                    "--initial-cluster=envtest=http://127.0.0.1:{}",
                    self.peer_port
                ),
                "--unsafe-no-fsync".to_string(),
                "--log-level=warn".to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        *lock(&self.etcd) = Some(child);
    }

    /// Kills etcd (SIGKILL) and waits for it to exit.
    pub fn kill_etcd(&self) {
        if let Some(mut c) = lock(&self.etcd).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub fn restart_etcd(&self) {
        self.kill_etcd();
        self.start_etcd();
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap_or_else(|e| panic!("open {name}: {e}"))
    }

    fn spawn_apiserver(&self) -> Child {
        let p = |n: &str| self.path(n).display().to_string();
        let log = self.log_file("kube-apiserver.log");
        Command::new(self.assets.join("kube-apiserver"))
            .args([
                format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                format!("--secure-port={}", self.api_port),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--tls-cert-file={}", p("serving.crt")),
                format!("--tls-private-key-file={}", p("serving.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--authorization-mode=RBAC".into(),
                "--endpoint-reconciler-type=none".into(),
                "--service-cluster-ip-range=10.96.0.0/12".into(),
                "--allow-privileged=true".into(),
                // envtest's default: no token controller runs, so no ServiceAccount admission.
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", p("audit.log")),
                format!("--cert-dir={}", p("certs")),
                "--v=0".into(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("log: {e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kube-apiserver: {e}"))
    }

    /// Starts (or restarts) the API server on its port and waits until it is ready.
    pub async fn start_apiserver(&self) {
        *lock(&self.apiserver) = Some(self.spawn_apiserver());
        self.wait_ready(Duration::from_secs(90)).await;
    }

    /// Kills the API server (SIGKILL) and waits for it to exit; etcd keeps running.
    pub fn kill_apiserver(&self) {
        if let Some(mut c) = lock(&self.apiserver).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the API server again without waiting for it.
    pub fn spawn_apiserver_again(&self) {
        *lock(&self.apiserver) = Some(self.spawn_apiserver());
    }

    /// Polls `/readyz` (backing off to 500 ms) until it answers `ok`.
    pub async fn wait_ready(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        let mut delay = Duration::from_millis(100);
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .unwrap_or_else(|e| panic!("request: {e}"));
            if let Ok(t) = self.client.request_text(req).await
                && t.trim() == "ok"
            {
                return;
            }
            for (name, child) in [("etcd", &self.etcd), ("kube-apiserver", &self.apiserver)] {
                let exited = lock(child)
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    panic!(
                        "{name} exited ({status}) before the API server was ready:\n{}",
                        tail(&self.dir.path().join(format!("{name}.log")), 40)
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the API server was not ready within {within:?}:\n{}",
                tail(&self.path("kube-apiserver.log"), 40)
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Every request the API server has recorded so far. A marker request is sent first and
    /// waited for, so everything answered before this call is in the log.
    pub async fn requests(&self) -> Vec<audit::Request> {
        let n = self.markers.fetch_add(1, Ordering::Relaxed);
        let name = format!("audit-marker-{n}");
        let req = http::Request::get(format!("/api/v1/namespaces/default/configmaps/{name}"))
            .body(Vec::new())
            .unwrap_or_else(|e| panic!("request: {e}"));
        let _ = self.client.request_text(req).await;
        for _ in 0..200 {
            let all = audit::read(&self.path("audit.log"));
            if all.iter().any(|r| r.name == name && r.user == ADMIN_USER) {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the audit log never recorded the marker request {name}");
    }

    /// Requests made by `user`, in the order the server recorded them.
    pub async fn requests_by(&self, user: &str) -> Vec<audit::Request> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r.user == user)
            .collect()
    }

    /// How many requests the server has recorded so far (a cursor for [`Self::agent_requests_since`]).
    pub async fn cursor(&self) -> usize {
        self.requests().await.len()
    }

    /// The agent's requests recorded after `cursor`.
    pub async fn agent_requests_since(&self, cursor: usize) -> Vec<audit::Request> {
        self.requests()
            .await
            .into_iter()
            .skip(cursor)
            .filter(|r| r.user == AGENT_USER)
            .collect()
    }

    /// From now on, [`ApiServer::agent_requests`] counts only what comes after.
    pub async fn reset_counts(&self) {
        let n = self.requests().await.len();
        self.since.store(n, Ordering::Relaxed);
    }

    /// The agent's requests since the start or the last [`ApiServer::reset_counts`].
    pub async fn agent_requests(&self) -> Vec<audit::Request> {
        self.agent_requests_since(self.since.load(Ordering::Relaxed))
            .await
    }

    /// The agent's mutating requests since the start or the last [`ApiServer::reset_counts`].
    /// The agent's mutating requests since `cursor`, as the API server recorded them (one line
    /// each, for an assertion message).
    pub async fn agent_mutations_since(&self, cursor: usize) -> Vec<String> {
        self.agent_requests_since(cursor)
            .await
            .into_iter()
            .filter(audit::Request::is_mutating)
            .map(|r| r.to_string())
            .collect()
    }

    pub async fn agent_mutations(&self) -> Vec<audit::Request> {
        self.agent_requests()
            .await
            .into_iter()
            .filter(audit::Request::is_mutating)
            .collect()
    }

    /// `kubectl` as the test's admin user.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(self.admin_kubeconfig_path());
        c
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill_apiserver();
        self.kill_etcd();
        // ENVTEST_KEEP=1 keeps the logs, certificates and audit log for a post-mortem.
        if std::env::var_os("ENVTEST_KEEP").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
            );
            eprintln!("envtest files kept in {}", dir.keep().display());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn kubeconfig_text(port: u16, ca_pem: &str, id: &Identity) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: envtest
    cluster:
      server: https://127.0.0.1:{port}
      certificate-authority-data: {ca}
users:
  - name: user
    user:
      client-certificate-data: {cert}
      client-key-data: {key}
contexts:
  - name: envtest
    context: {{cluster: envtest, user: user}}
current-context: envtest
",
        ca = b64(ca_pem),
        cert = b64(&id.cert_pem),
        key = b64(&id.key_pem),
    )
}
