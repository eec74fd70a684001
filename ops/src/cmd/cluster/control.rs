//! How `keel cluster node ...` in another terminal reaches the running `keel cluster start`:
//! a Unix socket in Linux's abstract namespace, named after the cluster's data directory, one
//! request line and one reply line per connection.
//!
//! The supervisor owns the node processes (it spawned them and reaps them), so every signal
//! goes through it: a pid is only ever signalled while its child is not reaped, so never a
//! pid the kernel has given to another process since. Binding the name also keeps a second
//! `keel cluster start` off a data directory that already has one.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

/// What a node command asks the supervisor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SIGTERM, and wait for the node to exit (SIGKILL after the stop timeout).
    Stop,
    /// SIGKILL.
    Kill,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
    /// Spawn the node again with the same arguments, ports and data dir.
    Start,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Start => "start",
        }
    }

    fn parse(word: &str) -> Option<Action> {
        [
            Action::Stop,
            Action::Kill,
            Action::Pause,
            Action::Resume,
            Action::Start,
        ]
        .into_iter()
        .find(|a| a.as_str() == word)
    }
}

/// One request: an action on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub action: Action,
    pub node: i32,
}

impl Request {
    pub fn line(self) -> String {
        format!("{} {}\n", self.action.as_str(), self.node)
    }

    pub fn parse(line: &str) -> Result<Request, String> {
        let mut words = line.split_whitespace();
        let (Some(action), Some(node), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("expected `<action> <node id>`, got {line:?}"));
        };
        let action = Action::parse(action).ok_or_else(|| format!("unknown action {action:?}"))?;
        let node = node
            .parse()
            .map_err(|_| format!("node id {node:?} is not a number"))?;
        Ok(Request { action, node })
    }
}

/// The reply line: `ok <what happened>` or `error <why not>`.
pub fn reply_line(result: &Result<String, String>) -> String {
    match result {
        Ok(m) => format!("ok {}\n", one_line(m)),
        Err(m) => format!("error {}\n", one_line(m)),
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', "; ")
}

/// The socket's name for the cluster in `data_dir`: a hash of its canonical path, so every
/// spelling of the directory (relative, absolute, through links) finds the same cluster.
fn address(data_dir: &Path) -> anyhow::Result<SocketAddr> {
    let canonical = data_dir
        .canonicalize()
        .with_context(|| format!("no cluster directory {}", data_dir.display()))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in canonical.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    SocketAddr::from_abstract_name(format!("keel-cluster-{hash:016x}"))
        .context("cannot name the control socket")
}

/// The supervisor's end; fails if a supervisor already serves `data_dir`.
pub fn bind(data_dir: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    let addr = address(data_dir)?;
    let listener = UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!(
                "a cluster is already running from {} (stop it with Ctrl-C in its terminal)",
                data_dir.display()
            )
        } else {
            anyhow!(e).context("cannot open the control socket")
        }
    })?;
    listener
        .set_nonblocking(true)
        .context("cannot make the control socket non-blocking")?;
    tokio::net::UnixListener::from_std(listener).context("cannot watch the control socket")
}

/// Sends `request` to the supervisor of the cluster in `data_dir` and returns its answer
/// (`Err` carries the supervisor's refusal). Waits up to `timeout` for it.
pub fn send(data_dir: &Path, request: Request, timeout: Duration) -> anyhow::Result<String> {
    let addr = address(data_dir)?;
    let mut stream = UnixStream::connect_addr(&addr).map_err(|_| {
        anyhow!(
            "no cluster is running from {dir} — start one with `keel cluster start --data-dir {dir}`",
            dir = data_dir.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.line().as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("no answer from the cluster supervisor")?;
    match line.trim_end().split_once(' ') {
        Some(("ok", m)) => Ok(m.to_string()),
        Some(("error", m)) => bail!("{m}"),
        _ => bail!("unexpected answer from the cluster supervisor: {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        for action in [
            Action::Stop,
            Action::Kill,
            Action::Pause,
            Action::Resume,
            Action::Start,
        ] {
            let r = Request { action, node: 3 };
            assert_eq!(Request::parse(&r.line()), Ok(r));
        }
        for bad in ["", "stop", "stop x", "halt 1", "stop 1 2"] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(reply_line(&Ok("a\nb".into())), "ok a; b\n");
        assert_eq!(reply_line(&Err("no".into())), "error no\n");
    }

    #[tokio::test]
    async fn one_supervisor_per_directory_and_requests_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind(dir.path()).unwrap();
        let again = bind(dir.path()).unwrap_err().to_string();
        assert!(again.contains("already running"), "{again}");
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
            let (stream, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            tokio::io::BufReader::new(rd)
                .read_line(&mut line)
                .await
                .unwrap();
            let req = Request::parse(&line).unwrap();
            let reply = reply_line(&Err(format!("node {} is busy", req.node)));
            wr.write_all(reply.as_bytes()).await.unwrap();
        });
        let path = dir.path().to_path_buf();
        let answer = tokio::task::spawn_blocking(move || {
            send(
                &path,
                Request {
                    action: Action::Kill,
                    node: 2,
                },
                Duration::from_secs(5),
            )
        })
        .await
        .unwrap();
        server.await.unwrap();
        assert_eq!(answer.unwrap_err().to_string(), "node 2 is busy");
        let other = tempfile::tempdir().unwrap();
        let none = send(
            other.path(),
            Request {
                action: Action::Kill,
                node: 2,
            },
            Duration::from_secs(1),
        );
        assert!(none
            .unwrap_err()
            .to_string()
            .contains("no cluster is running"));
    }
}
