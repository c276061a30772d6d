//! A real swtpm per test: TCP (127.0.0.1, free ports) or Unix sockets in a temp dir, killed on
//! drop. Plus functions that run tpm2-tools against it (including the attacker's read of the
//! seed), the agent's TPM settings for it (a test key factor, fake efivars with SecureBoot on),
//! and the built agent binary.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bootstrap_agent::seal::{self, TpmSettings};
use bootstrap_agent::secureboot;
use tempfile::TempDir;

/// The key factor the tests configure (`tpm.factor`): not secret, a test value.
pub const TEST_FACTOR: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// How the TPM is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// Server on `port`, control channel on `port + 1` (the layout tpm2-tools' swtpm TCTI uses).
    Tcp {
        port: u16,
    },
    Unix {
        server: PathBuf,
        ctrl: PathBuf,
    },
}

/// A running swtpm with its own state directory.
pub struct Swtpm {
    child: Child,
    dir: TempDir,
    pub listen: Listen,
}

impl Swtpm {
    /// Starts a TPM 2.0 simulator on free TCP ports of 127.0.0.1, already started up (CLEAR).
    pub fn start() -> io::Result<Self> {
        let mut last = None;
        for _ in 0..10 {
            let port = free_port_pair()?;
            match Self::spawn(Listen::Tcp { port }) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e), // lost a port race: pick others
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("could not start swtpm")))
    }

    /// Starts a simulator listening on Unix sockets in its state directory.
    pub fn start_unix() -> io::Result<Self> {
        Self::spawn(Listen::Unix {
            server: PathBuf::new(),
            ctrl: PathBuf::new(),
        })
    }

    fn spawn(listen: Listen) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        std::fs::create_dir(&state)?;
        let listen = match listen {
            Listen::Unix { .. } => Listen::Unix {
                server: dir.path().join("tpm.sock"),
                ctrl: dir.path().join("ctrl.sock"),
            },
            tcp => tcp,
        };
        let (server, ctrl) = match &listen {
            Listen::Tcp { port } => (
                format!("type=tcp,port={port},bindaddr=127.0.0.1"),
                format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            ),
            Listen::Unix { server, ctrl } => (
                format!("type=unixio,path={}", server.display()),
                format!("type=unixio,path={}", ctrl.display()),
            ),
        };
        let mut child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--server", &server, "--ctrl", &ctrl])
            .args(["--flags", "not-need-init,startup-clear", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run swtpm ({e}); install swtpm (tests/install-deps.sh)"),
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("swtpm exited early: {status}")));
            }
            let ready = match &listen {
                Listen::Tcp { port } => TcpStream::connect(("127.0.0.1", *port)).is_ok(),
                // The socket file appears at bind(), before listen(): connect, as for TCP.
                Listen::Unix { server, .. } => {
                    std::os::unix::net::UnixStream::connect(server).is_ok()
                }
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(
                    "swtpm did not start listening within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { child, dir, listen })
    }

    /// The agent's address for this TPM (`tcp://127.0.0.1:PORT` or `unix:///PATH`).
    pub fn address(&self) -> String {
        match &self.listen {
            Listen::Tcp { port } => format!("tcp://127.0.0.1:{port}"),
            Listen::Unix { server, .. } => format!("unix://{}", server.display()),
        }
    }

    /// The tpm2-tools TCTI string (TCP only).
    pub fn tcti(&self) -> String {
        match &self.listen {
            Listen::Tcp { port } => format!("swtpm:host=127.0.0.1,port={port}"),
            Listen::Unix { server, .. } => format!("swtpm:path={}", server.display()),
        }
    }

    /// A scratch directory that lives as long as the simulator.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Simulated reboot: `swtpm_ioctl -i` (TPM_Init: PCRs back to reset values, NV kept). The
    /// next client must send TPM2_Startup(CLEAR), which the agent does on simulators.
    pub fn reboot(&self) -> io::Result<()> {
        let mut cmd = Command::new("swtpm_ioctl");
        match &self.listen {
            Listen::Tcp { port } => cmd.args(["--tcp", &format!("127.0.0.1:{}", port + 1)]),
            Listen::Unix { ctrl, .. } => cmd.arg("--unix").arg(ctrl),
        };
        let out = cmd.arg("-i").output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "swtpm_ioctl -i failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Fake efivars in the scratch directory (as efivarfs presents SecureBoot and SetupMode);
    /// returns the directory.
    // Test support: a broken environment is reported by a panic with a clear message.
    #[allow(clippy::expect_used)]
    pub fn efivars(&self, secure_boot: bool, setup_mode: bool) -> PathBuf {
        let dir = self.dir.path().join("efivars");
        secureboot::write_fake(&dir, secure_boot, setup_mode).expect("write fake efivars");
        dir
    }

    /// The agent's settings for this TPM as the tests use it: no pinned salt key (a simulator,
    /// `insecure_transport`), the test key factor, SecureBoot on in user mode.
    // Test support: a broken environment is reported by a panic with a clear message.
    #[allow(clippy::expect_used)]
    pub fn settings(&self) -> TpmSettings {
        TpmSettings {
            insecure_transport: true,
            factor: Some(TEST_FACTOR.parse().expect("test factor")),
            efivars: self.efivars(true, false),
            ..TpmSettings::at(&self.address()).expect("swtpm address")
        }
    }

    /// The test key factor in a file, for `--factor-file`.
    // Test support: a broken environment is reported by a panic with a clear message.
    #[allow(clippy::expect_used)]
    pub fn factor_file(&self) -> PathBuf {
        let path = self.dir.path().join("factor.hex");
        std::fs::write(&path, TEST_FACTOR).expect("write factor file");
        path
    }

    /// The attacker's read with tpm2-tools: a policy session, PolicyPCR over SHA-256 PCRs 7 and
    /// 15 (the agent's default policy), NV_Read of the default index. `Some(seed)` when the
    /// TPM hands it out.
    // Test support: a broken environment is reported by a panic with a clear message.
    #[allow(clippy::expect_used)]
    pub fn attacker_read_seed(&self) -> Option<Vec<u8>> {
        let index = format!("0x{:08X}", seal::DEFAULT_NV_INDEX);
        let run = |tool: &str, args: &[&str]| self.tpm2(tool, args).expect("run tpm2-tools");
        let started = run(
            "tpm2_startauthsession",
            &["--policy-session", "-S", "attacker.ctx"],
        );
        assert!(
            started.status.success(),
            "tpm2_startauthsession: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let policy = run(
            "tpm2_policypcr",
            &["-S", "attacker.ctx", "-l", "sha256:7,15"],
        );
        let read = policy.status.success().then(|| {
            run(
                "tpm2_nvread",
                &[
                    &index,
                    "-C",
                    &index,
                    "-P",
                    "session:attacker.ctx",
                    "-s",
                    "32",
                    "-o",
                    "stolen.bin",
                ],
            )
        });
        run("tpm2_flushcontext", &["attacker.ctx"]);
        let path = self.dir.path().join("stolen.bin");
        let stolen = read
            .filter(|o| o.status.success())
            .and_then(|_| std::fs::read(&path).ok());
        let _ = std::fs::remove_file(&path);
        stolen
    }

    /// Runs a tpm2-tools command against this TPM.
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> io::Result<Output> {
        Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", self.tcti())
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port P on 127.0.0.1 with P + 1 also free at the time of asking.
fn free_port_pair() -> io::Result<u16> {
    for _ in 0..50 {
        let a = TcpListener::bind(("127.0.0.1", 0))?;
        let port = a.local_addr()?.port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no free pair of adjacent ports on 127.0.0.1",
    ))
}

/// The built `bootstrap-agent` binary, next to the test executable's `deps/` directory.
pub fn agent_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("test executable has no parent directory"))?;
    let bin = profile_dir.join("bootstrap-agent");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: build it first (`cargo build -p bootstrap-agent`, or run the suite with `cargo nextest run --workspace`)",
                bin.display()
            ),
        ))
    }
}
