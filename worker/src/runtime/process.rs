//! The process runtime: the server and tools are local processes in the sandbox's private dir
//! (see [`crate::sandbox`]: unprivileged user and no network when root). Tools come from the
//! worker's own installation.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tracing::warn;

use super::{Backend, ContainerSpec, FeedRx, Tool, ToolOutput, read_limited};
use crate::sandbox::ProcessRuntime;
use crate::tail;

/// A process sandbox's server.
#[derive(Debug)]
pub struct ProcessBackend {
    rt: ProcessRuntime,
    /// The server; killed with `stop_signal` at teardown.
    server: Option<Child>,
    stop_signal: Signal,
}

impl ProcessBackend {
    pub fn new(rt: &ProcessRuntime) -> ProcessBackend {
        ProcessBackend {
            rt: rt.clone(),
            server: None,
            stop_signal: Signal::SIGKILL,
        }
    }
}

#[async_trait::async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn host_socket_dir(&self, dir: &Path) -> PathBuf {
        dir.to_owned()
    }

    fn tool_socket_dir(&self, dir: &Path) -> PathBuf {
        dir.to_owned()
    }

    fn adopt_server(&mut self, child: Child, signal: Signal) -> Result<(), String> {
        self.server = Some(child);
        self.stop_signal = signal;
        Ok(())
    }

    async fn start_image(&mut self, _dir: &Path, spec: ContainerSpec) -> Result<(), String> {
        Err(format!(
            "the process runtime cannot run image {} (use the docker runtime)",
            spec.image
        ))
    }

    async fn server_exited(&mut self) -> Option<String> {
        let child = self.server.as_mut()?;
        let status = child.try_wait().ok()??;
        self.server = None;
        Some(format!("exited ({status})"))
    }

    async fn fault(&self, dir: &Path) -> Option<String> {
        let log = std::fs::read(dir.join("server.log")).ok()?;
        let end = &log[log.len().saturating_sub(64 * 1024)..];
        rehearse_core::fault::environment(&String::from_utf8_lossy(end))
    }

    async fn run(
        &self,
        dir: &Path,
        tool: Tool,
        feed: Option<FeedRx>,
    ) -> Result<ToolOutput, String> {
        run_process(&self.rt, dir, tool, feed).await
    }

    async fn stop(&mut self) -> Vec<String> {
        if let Some(mut child) = self.server.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), self.stop_signal);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                warn!("the sandbox server ignored its stop signal; killing it");
                let _ = child.kill().await;
            }
        }
        Vec::new()
    }
}

async fn run_process(
    rt: &ProcessRuntime,
    dir: &Path,
    tool: Tool,
    feed: Option<FeedRx>,
) -> Result<ToolOutput, String> {
    let mut cmd = if tool.untrusted {
        rt.command(&tool.host_program, dir)
    } else {
        rt.client_command(&tool.host_program, dir)
    };
    cmd.args(&tool.args)
        .stdin(if feed.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if tool.capture_stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", tool.name))?;
    let watch = tool.watch.clone();
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(tail::collect_watched(s, watch)));
    let stdout = child.stdout.take().map(|s| tokio::spawn(read_limited(s)));
    let mut feed_error = None;
    if let Some(mut rx) = feed {
        let mut stdin = child.stdin.take();
        while let Some(message) = rx.recv().await {
            match message {
                Ok(chunk) => {
                    let Some(pipe) = stdin.as_mut() else { break };
                    // A write error means the tool exited; its status and stderr say why.
                    if pipe.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                Err(reason) => {
                    feed_error = Some(reason);
                    break;
                }
            }
        }
        drop(stdin);
        if feed_error.is_some() {
            let _ = child.kill().await;
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("wait for {}: {e}", tool.name))?;
    let stderr = match stderr {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    let stdout = match stdout {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    if let Some(reason) = feed_error {
        return Err(reason);
    }
    Ok(ToolOutput {
        code: status.code().map(i64::from),
        status: status.to_string(),
        stderr,
        stdout,
    })
}
