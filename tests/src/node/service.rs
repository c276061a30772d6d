//! Runs the agent binary as Talos runs an extension service: one process at a time, restarted
//! per the spec's restart policy, its output collected (Talos keeps it as the service log).
//!
//! The restart policy follows Talos's restart runner (siderolabs/talos
//! `internal/app/machined/pkg/system/runner/restart/restart.go` at ad88231): `untilSuccess`
//! ends after an exit without error and starts the process again after any error — a non-zero
//! exit or a signal — once `RestartInterval` has passed (`Run`, lines 132-155), which is 5 s
//! unless the service sets another (`DefaultOptions`, line 80; extension services do not:
//! `internal/app/machined/pkg/system/services/extension.go`, lines 236-249). Stopping the service
//! aborts the restart sequence (lines 119-123 and 149-153). Extension services are
//! `untilSuccess`, `always` (`Forever`) or `never` (`Once`).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::Read;
use std::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::spec::Restart;

/// Talos's default pause between a failed run of a service and the next start
/// (`restart.DefaultOptions`, `RestartInterval: 5 * time.Second`).
pub const TALOS_RESTART_INTERVAL: Duration = Duration::from_secs(5);

/// How one process of the service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it, when it was killed.
    pub signal: Option<i32>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory (the container's root, mapped on the host).
    pub cwd: PathBuf,
    pub restart: Restart,
    /// Pause before a restart: Talos's `RestartInterval` ([`TALOS_RESTART_INTERVAL`]), or less
    /// in tests that only care about what a restart finds.
    pub restart_interval: Duration,
    /// Stop restarting after this many starts.
    pub max_starts: usize,
}

#[derive(Default)]
struct Shared {
    pid: Option<u32>,
    exits: Vec<Exit>,
    log: Vec<u8>,
    /// Highest VmHWM seen in /proc/<pid>/status, in KiB, over every process.
    peak_rss_kib: u64,
    finished: bool,
}

/// A running service. Dropping it kills the current process.
pub struct Service {
    shared: Arc<Mutex<Shared>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// What a finished service did.
#[derive(Debug, Clone)]
pub struct ServiceReport {
    pub exits: Vec<Exit>,
    /// stdout and stderr of every process, in order.
    pub log: String,
    pub peak_rss_kib: u64,
}

impl ServiceReport {
    pub fn last(&self) -> Option<Exit> {
        self.exits.last().copied()
    }
}

impl Service {
    /// Starts the first process and supervises it.
    pub fn start(launch: Launch) -> Service {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (stop, stop_rx) = watch::channel(false);
        let s = shared.clone();
        let task = tokio::spawn(supervise(launch, s, stop_rx));
        Service {
            shared,
            stop,
            task: Some(task),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// Exits so far.
    pub fn exits(&self) -> Vec<Exit> {
        self.lock().exits.clone()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.lock().log).into_owned()
    }

    pub fn finished(&self) -> bool {
        self.lock().finished
    }

    /// Sends SIGKILL to the current process (the supervisor restarts it per the policy).
    /// Returns the pid killed.
    pub fn kill9(&self) -> Option<u32> {
        let pid = self.pid()?;
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).ok()?;
        Some(pid)
    }

    /// Waits until the supervisor stops restarting (success, `never`, or the start limit).
    /// Panics with the log when `timeout` passes first.
    pub async fn wait(mut self, timeout: Duration) -> ServiceReport {
        let deadline = Instant::now() + timeout;
        while !self.finished() {
            if Instant::now() > deadline {
                let log = self.log();
                self.shutdown().await;
                panic!(
                    "the agent service did not finish within {timeout:?}; exits {:?}; log:\n{log}",
                    self.exits()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.report()
    }

    /// Stops the service as Talos does (SIGTERM, no restart) and returns what it did.
    pub async fn stop(mut self) -> ServiceReport {
        self.shutdown().await;
        self.report()
    }

    async fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }

    fn report(&self) -> ServiceReport {
        let s = self.lock();
        ServiceReport {
            exits: s.exits.clone(),
            log: String::from_utf8_lossy(&s.log).into_owned(),
            peak_rss_kib: s.peak_rss_kib,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pump(mut from: impl Read, shared: Arc<Mutex<Shared>>) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut s) = shared.lock() {
                    s.log.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
}

async fn supervise(launch: Launch, shared: Arc<Mutex<Shared>>, mut stop: watch::Receiver<bool>) {
    let set = |f: &mut dyn FnMut(&mut Shared)| {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    };
    let mut starts = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        starts += 1;
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .current_dir(&launch.cwd)
            .env_clear()
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot start {}: {e}\n", launch.program.display());
                set(&mut |s| {
                    s.log.extend_from_slice(msg.as_bytes());
                    s.exits.push(Exit {
                        code: Some(127),
                        signal: None,
                    });
                });
                break;
            }
        };
        let pid = child.id();
        set(&mut |s| s.pid = Some(pid));
        let out = child.stdout.take().map(|o| {
            let sh = shared.clone();
            std::thread::spawn(move || pump(o, sh))
        });
        let err = child.stderr.take().map(|e| {
            let sh = shared.clone();
            std::thread::spawn(move || pump(e, sh))
        });
        let mut stopped = false;
        let mut term_sent: Option<Instant> = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            if let Some(kib) = vm_hwm_kib(pid) {
                set(&mut |s| s.peak_rss_kib = s.peak_rss_kib.max(kib));
            }
            if *stop.borrow() && term_sent.is_none() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                stopped = true;
                term_sent = Some(Instant::now());
            }
            if term_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
                let _ = child.kill();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        for t in [out, err].into_iter().flatten() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let exit = match status {
            Ok(st) => Exit {
                code: st.code(),
                signal: st.signal(),
            },
            Err(_) => Exit {
                code: None,
                signal: None,
            },
        };
        set(&mut |s| {
            s.pid = None;
            s.exits.push(exit);
        });
        let again = match launch.restart {
            Restart::Always => true,
            Restart::Never => false,
            Restart::UntilSuccess => !exit.success(),
        };
        if stopped || !again || starts >= launch.max_starts {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(launch.restart_interval) => {}
            _ = stop.changed() => break,
        }
    }
    set(&mut |s| s.finished = true);
}
