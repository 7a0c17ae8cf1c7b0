//! End-to-end test support: real `ternd` processes on 127.0.0.1 with port 0 and a temporary data
//! dir, found through the `ports.json` they write. Every wait is bounded in time.
//!
//! The binaries are the ones cargo builds next to the test executables (run the tests with
//! `cargo test --release --workspace`, or `-p tern-engine -p tern-tools -p tern-tests`, so that
//! they are current); set `TERND_BIN` / `TERN_BIN` to use others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tern_protocol::{Body, Frame};
use tern_tools::{Connection, ConnectionError, HelloParams};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a binary of the workspace. `cargo test --workspace` (and `cargo test -p tern-engine
/// -p tern-tools -p tern-tests`) builds them next to the test executables, in
/// `target/release/`; when one is missing it is built here with cargo.
fn built_binary(package: &str, bin: &str, env_override: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_override) {
        return PathBuf::from(p);
    }
    // The test executable is target/release/deps/<name>; binaries are in target/release.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test exe path {exe:?}"));
    let path = dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", package, "--bin", bin])
            .current_dir(workspace_root())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {bin}: {e}"));
        assert!(status.success(), "building {bin} failed");
    }
    assert!(path.exists(), "{path:?} missing");
    path
}

/// The `ternd` binary.
pub fn ternd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("tern-engine", "ternd", "TERND_BIN"))
}

/// The `tern` client binary.
pub fn tern_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("tern-tools", "tern", "TERN_BIN"))
}

/// The `terndump` protocol dump tool.
pub fn terndump_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("tern-tools", "terndump", "TERNDUMP_BIN"))
}

/// The `ternbench` load tool.
pub fn ternbench_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("tern-tools", "ternbench", "TERNBENCH_BIN"))
}

/// A running `ternd` with its own data dir; killed when dropped.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// Environment for ternd on top of `RUST_LOG=warn` (see [`Node::start_logged`]).
    env: Vec<(String, String)>,
    /// Where ternd's stderr goes (appended across restarts); inherited when `None`.
    stderr_log: Option<PathBuf>,
    pub native: String,
    pub admin: String,
    /// TLS listener (native, WebSocket, tunnel inside TLS).
    pub tls: String,
    /// Plain HTTP listener (WebSocket, tunnel).
    pub http: String,
    /// Cluster gossip address (UDP), when started with `--cluster`.
    pub cluster: String,
}

impl Node {
    /// Starts a node in a fresh temporary data dir (dev mode, two cores).
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node with extra command-line arguments.
    pub fn start_with(extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut node = Node {
            child: None,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            stderr_log: None,
            native: String::new(),
            admin: String::new(),
            tls: String::new(),
            http: String::new(),
            cluster: String::new(),
        };
        node.spawn();
        node
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process id of the running node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn spawn(&mut self) {
        let ports = self.dir.path().join("ports.json");
        let _ = std::fs::remove_file(&ports);
        // A restart keeps the addresses, so that clients reconnect to the same place.
        let native = if self.native.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.native.clone()
        };
        let admin = if self.admin.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.admin.clone()
        };
        let or_free = |a: &str| {
            if a.is_empty() {
                "127.0.0.1:0".to_owned()
            } else {
                a.to_owned()
            }
        };
        let (tls, http) = (or_free(&self.tls), or_free(&self.http));
        let mut cmd = Command::new(ternd_bin());
        cmd.args([
            "--dev",
            "--native",
            &native,
            "--admin",
            &admin,
            "--tls",
            &tls,
            "--http",
            &http,
            "--data-dir",
        ])
        .arg(self.dir.path())
        .args(&self.extra);
        if !self.extra.iter().any(|a| a == "--cores") {
            cmd.args(["--cores", "2"]);
        }
        // TERN_IO_DRIVER (auto, io_uring, legacy) reaches the node through its environment, so
        // the whole suite can be run on either driver.
        cmd.env("RUST_LOG", "warn");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let stderr = match &self.stderr_log {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .unwrap_or_else(|e| panic!("cannot open {path:?}: {e}")),
            None => Stdio::inherit(),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ternd: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    self.native = v["native"].as_str().unwrap_or_default().to_owned();
                    self.admin = v["admin"].as_str().unwrap_or_default().to_owned();
                    self.tls = v["tls"].as_str().unwrap_or_default().to_owned();
                    self.http = v["http"].as_str().unwrap_or_default().to_owned();
                    self.cluster = v["cluster"].as_str().unwrap_or_default().to_owned();
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("ternd exited during start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "ternd did not write ports.json in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (at most 15 s) for the process to drain and exit; its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self
            .child
            .take()
            .unwrap_or_else(|| panic!("node not running"));
        let status = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -TERM: {e}"));
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("ternd did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the node and starts it again on the same data dir and addresses.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Mints a token with `ternd token` (the node's dev secret).
    pub fn token(&self, user: &str, device: Option<&str>, ttl_secs: u64) -> String {
        let mut cmd = Command::new(ternd_bin());
        cmd.args([
            "token",
            "--user",
            user,
            "--ttl",
            &ttl_secs.to_string(),
            "--data-dir",
        ])
        .arg(self.dir.path());
        if let Some(d) = device {
            cmd.args(["--device", d]);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("ternd token: {e}"));
        assert!(
            out.status.success(),
            "ternd token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Connects and authenticates `user` on `device` with a fresh token bound to the device.
    pub fn connect(&self, user: &str, device: &str) -> Connection {
        let token = self.token(user, Some(device), 3600);
        Connection::connect(&self.native, &HelloParams::new(token, device), WAIT)
            .unwrap_or_else(|e| panic!("{user}/{device} cannot connect: {e}"))
    }

    /// Tries a handshake with an arbitrary token and device.
    pub fn try_connect(&self, token: &str, device: &str) -> Result<Connection, ConnectionError> {
        Connection::connect(&self.native, &HelloParams::new(token, device), WAIT)
    }

    /// GET on the admin endpoint: (status line, body).
    pub fn admin_get(&self, path: &str) -> (String, String) {
        self.admin_call("GET", path)
    }

    /// A request with `method` on the admin endpoint: (status line, body).
    pub fn admin_call(&self, method: &str, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.admin)
            .unwrap_or_else(|e| panic!("admin connect: {e}"));
        s.set_read_timeout(Some(WAIT)).ok();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_or_else(|e| panic!("admin write: {e}"));
        let mut text = String::new();
        s.read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("admin read: {e}"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or_default().to_owned(),
            body.to_owned(),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Receives frames until `pred` picks one, within [`WAIT`]; frames not picked are returned too.
pub fn recv_until(
    conn: &mut Connection,
    mut pred: impl FnMut(&Frame<'static>) -> bool,
) -> (Frame<'static>, Vec<Frame<'static>>) {
    let deadline = Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no matching frame within {WAIT:?}; got {skipped:?}"
        );
        match conn.recv(left) {
            Ok(Some(f)) if pred(&f) => return (f, skipped),
            Ok(Some(f)) => skipped.push(f),
            Ok(None) => {}
            Err(e) => panic!("connection failed while waiting: {e}; got {skipped:?}"),
        }
    }
}

/// Waits for the server to end the connection; returns every frame received before.
pub fn recv_until_closed(conn: &mut Connection) -> Vec<Frame<'static>> {
    let deadline = Instant::now() + WAIT;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {WAIT:?}; got {frames:?}"
        );
        match conn.recv(left) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {}
            Err(_) => return frames,
        }
    }
}

/// Asserts that no frame arrives for `quiet`.
pub fn assert_silent(conn: &mut Connection, quiet: Duration) {
    match conn.recv(quiet) {
        Ok(None) => {}
        Ok(Some(f)) => panic!("expected silence, got {f:?}"),
        Err(e) => panic!("connection failed: {e}"),
    }
}

/// Whether a frame is a PUSH.
pub fn is_push(f: &Frame<'_>) -> bool {
    matches!(f.body, Body::Push(_))
}

// ---------------------------------------------------------------------------------------------
// Logs of a node, and other daemons (proxies) run in the foreground next to it

impl Node {
    /// Starts a node (as [`Node::start_with`]) with `RUST_LOG=rust_log` and its stderr appended
    /// to [`Node::log_path`], so that a test can read what it logged (e.g. a session's peer).
    pub fn start_logged(extra: &[&str], rust_log: &str) -> Node {
        Node::start_with_env(extra, &[("RUST_LOG", rust_log), ("NO_COLOR", "1")], true)
    }

    /// Starts a node with extra arguments and environment variables (which override the
    /// harness's `RUST_LOG=warn`); with `capture_stderr`, its stderr goes to
    /// [`Node::log_path`] instead of the test's.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)], capture_stderr: bool) -> Node {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let stderr_log = capture_stderr.then(|| dir.path().join("ternd.log"));
        let mut node = Node {
            child: None,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            stderr_log,
            native: String::new(),
            admin: String::new(),
            tls: String::new(),
            http: String::new(),
            cluster: String::new(),
        };
        node.spawn();
        node
    }

    /// The file ternd's stderr goes to, when captured.
    pub fn log_path(&self) -> Option<&Path> {
        self.stderr_log.as_deref()
    }

    /// What the node has logged so far (empty when its stderr is not captured), without
    /// terminal colour codes.
    pub fn log_text(&self) -> String {
        self.stderr_log
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| strip_ansi(&t))
            .unwrap_or_default()
    }

    /// Waits (at most `timeout`) for a logged line that `pred` accepts, and returns it. A line is
    /// written before the effect a client can see (e.g. WELCOME), but this does not rely on it.
    pub fn wait_log_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log_text().lines().find(|l| pred(l)) {
                return Some(line.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which a logger may add even when
/// writing to a file.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=value` in a structured log line (`peer=127.0.0.1:4000`).
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// An installed program: on `PATH` or in the sbin directories where Debian puts daemons (a
/// non-root `PATH` often lacks them).
pub fn find_program(name: &str) -> Option<PathBuf> {
    const SBIN: [&str; 3] = ["/usr/local/sbin", "/usr/sbin", "/sbin"];
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.into_iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A TCP port on `ip` that was free a moment ago (for daemons that cannot be told to pick one
/// and report it). Another process may take it before it is used; that is a test failure with a
/// clear bind error, not a hang.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// A process run in the foreground for a test (squid, nginx, haproxy…), its stdout and stderr
/// appended to a log file; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd`; its output goes to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Daemon {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("cannot open {log:?}: {e}"))
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(open())
            .stderr(open())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        }
    }

    /// What the daemon wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` accepts TCP connections; panics with the daemon's output if it exits
    /// or `timeout` passes first.
    pub fn wait_listening(&mut self, addr: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let sock: std::net::SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?}: {e}"));
        loop {
            if std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} is not listening on {addr} after {timeout:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL: a test proxy has nothing to save) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Messaging over any transport

impl Node {
    /// Connects `user`/`device` over the rung `url` (any transport of SPEC §12) with a fresh
    /// token bound to the device.
    pub fn connect_via(
        &self,
        url: &str,
        options: &tern_tools::TransportOptions,
        user: &str,
        device: &str,
    ) -> Connection {
        let token = self.token(user, Some(device), 3600);
        Connection::connect_rung(
            &tern_tools::Rung::parse(url).unwrap_or_else(|e| panic!("{url}: {e}")),
            options,
            &HelloParams::new(token, device),
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{user}/{device} over {url}: {e}"))
    }
}

/// Sends a text message to `to` and checks the SEND_ACK names it.
pub fn send_text(conn: &mut Connection, to: &str, id: tern_protocol::MsgId, text: &str) {
    let body = Body::Send(tern_protocol::Send {
        to: tern_protocol::Conv::direct(to.to_owned()),
        msg_id: id,
        kind: tern_protocol::MessageKind::TEXT,
        body: text.as_bytes().to_vec().into(),
    });
    match conn.request(body, WAIT) {
        Ok(Frame {
            body: Body::SendAck(a),
            ..
        }) => assert_eq!(a.msg_id, id),
        other => panic!("{text}: expected SEND_ACK, got {other:?}"),
    }
}

/// Waits for the PUSH of message `id` and checks its text.
pub fn expect_push(conn: &mut Connection, id: tern_protocol::MsgId, text: &str) {
    let (f, _) = recv_until(conn, |f| matches!(&f.body, Body::Push(m) if m.msg_id == id));
    let Body::Push(m) = f.body else {
        unreachable!()
    };
    assert_eq!(m.body.as_ref(), text.as_bytes());
}

/// The token secret every node of a test cluster shares (tokens are cluster configuration: a
/// token minted for the cluster is accepted by every node).
pub const CLUSTER_JWT_SECRET: &str = "tern-test-cluster-jwt-secret-0123456789";

impl Node {
    /// Starts a cluster node (dev mode, so the public dev cluster secret unless `extra` names
    /// a secret file): gossip on a free UDP port of 127.0.0.1, joining the cluster addresses
    /// in `join`, tokens verified with [`CLUSTER_JWT_SECRET`], one core, stderr captured at
    /// `info` so that tests can read the membership log.
    pub fn start_cluster(join: &[&str], extra: &[&str]) -> Node {
        let joined = join.join(",");
        let mut args = vec![
            "--cluster",
            "127.0.0.1:0",
            "--jwt-secret",
            CLUSTER_JWT_SECRET,
            "--cores",
            "1",
        ];
        if !join.is_empty() {
            args.extend(["--join", joined.as_str()]);
        }
        args.extend_from_slice(extra);
        Node::start_logged(&args, "info")
    }

    /// A token for `user` on `device` signed with [`CLUSTER_JWT_SECRET`].
    pub fn cluster_token(user: &str, device: &str) -> String {
        let out = Command::new(ternd_bin())
            .args([
                "token",
                "--jwt-secret",
                CLUSTER_JWT_SECRET,
                "--user",
                user,
                "--device",
                device,
                "--ttl",
                "3600",
            ])
            .output()
            .unwrap_or_else(|e| panic!("ternd token: {e}"));
        assert!(
            out.status.success(),
            "ternd token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The value of an unlabelled metric on `/metrics`, if present.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    /// A JSON document from the admin API.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(path);
        assert!(status.contains("200"), "GET {path}: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }
}

/// Serialises the tests of one test binary that start several nodes: the machine has two
/// cores, and several clusters at once make failure detection and timings meaningless.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next event of `c` that `pred` accepts, within [`WAIT`].
pub fn wait_event(
    c: &tern_tools::Client,
    mut pred: impl FnMut(&tern_tools::Event) -> bool,
) -> Option<tern_tools::Event> {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(e) = c.next_event(Duration::from_millis(50)) {
            if pred(&e) {
                return Some(e);
            }
        }
    }
    None
}

/// The next PRESENCE of `user` that `c` receives.
pub fn presence_of(c: &tern_tools::Client, user: &str) -> tern_protocol::Presence<'static> {
    match wait_event(
        c,
        |e| matches!(e, tern_tools::Event::Presence(p) if p.user == user),
    ) {
        Some(tern_tools::Event::Presence(p)) => p,
        _ => panic!("no presence of {user}"),
    }
}

/// Every PRESENCE `c` receives within `quiet`.
pub fn presences_for(
    c: &tern_tools::Client,
    quiet: Duration,
) -> Vec<tern_protocol::Presence<'static>> {
    let end = Instant::now() + quiet;
    let mut out = Vec::new();
    while Instant::now() < end {
        if let Some(tern_tools::Event::Presence(p)) = c.next_event(Duration::from_millis(20)) {
            out.push(p);
        }
    }
    out
}

/// The cluster node id `n` reports (`GET /cluster/members`).
pub fn node_id(n: &Node) -> String {
    n.admin_json("/cluster/members")["node"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The first user of the form `{prefix}-{i}` that node `owner` serves, asked of `at`.
pub fn user_owned_by(at: &Node, owner: &str, prefix: &str) -> String {
    (0..2_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|u| at.admin_json(&format!("/cluster/owner?user={u}"))["node"] == owner)
        .unwrap_or_else(|| panic!("no user of {owner} among 2,000"))
}

/// Polls `check` every 20 ms until it returns `Some`, at most `timeout`; `None` if it never did.
pub fn poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
