//! The gateway's programs as child processes of a test or a benchmark:
//! started with a node's environment ([`node_command`]), stopped by a
//! signal and never left running ([`Proc`]), and the local ports they
//! listen on ([`free_port`], [`wait_port`]).

use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) when dropped still running.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        cmd.spawn().map(Proc)
    }

    /// Sends `signal` (SIGTERM, SIGHUP, ...), unless the process has been
    /// reaped (its pid may belong to another process by then).
    pub fn signal(&mut self, signal: libc::c_int) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) with the pid of our own child, not yet reaped,
            // and a valid signal number.
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, signal);
            }
        }
    }

    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Kills the process and reaps it.
    pub fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, then the exit within `grace`; killed after that. The exit
    /// status, `None` when it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.sigterm();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.sigkill();
        None
    }

    /// SIGTERM, then the exit status, which must be success; panics naming
    /// `what` otherwise (a test's check of a clean stop).
    pub async fn stop_cleanly(mut self, what: &str) {
        self.sigterm();
        let mut child = self;
        let status = tokio::task::spawn_blocking(move || child.0.wait())
            .await
            .expect("the waiting task ends");
        match status {
            Ok(status) => assert!(status.success(), "{what}: {status:?}"),
            Err(e) => panic!("{what}: cannot wait for it: {e}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// The command that runs `program` for the node whose database is
/// `node_dir`, as its deployment would: node data, broker, and the
/// certificate and key of that database, with warnings and errors logged
/// (APP_LOG_LEVEL may be set again on the command).
pub fn node_command(program: &Path, node_dir: &Path, broker: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(std::process::Stdio::null())
        .env("SWPT_NODEDATA_URL", format!("file://{}", node_dir.display()))
        .env("PROTOCOL_BROKER_URL", broker)
        .env("SWPT_SERVER_CERT", node_dir.join("server.crt"))
        .env("SWPT_SERVER_KEY", node_dir.join("server.key"))
        .env("APP_LOG_LEVEL", "warning");
    cmd
}

/// A TCP port of 127.0.0.1 that nothing listens on now.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until something accepts connections on 127.0.0.1:`port`; an
/// error after `within`.
pub async fn wait_port(port: u16, within: Duration) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                let why = format!("nothing listens on 127.0.0.1:{port} after {within:?} ({e})");
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_port_sees_a_listener_and_gives_up_without_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_port(port, Duration::from_secs(1)).await.unwrap();
        drop(listener);
        let err = wait_port(port, Duration::from_millis(200)).await.unwrap_err();
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    }

    #[test]
    fn stop_reports_the_exit_of_a_process_that_ends_on_sigterm() {
        let mut p = Proc::spawn(Command::new("sleep").arg("30")).unwrap();
        let status = p.stop(Duration::from_secs(5)).expect("sleep ends on SIGTERM");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }
}
