//! The `cedar-pdp` binary as an operator runs it: exit codes, error messages on stderr,
//! start-up on an ephemeral port, a clean exit on SIGTERM, reloads (on SIGHUP and on file
//! changes) and what they show on the Prometheus `/metrics` endpoint.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

mod common;

use common::{EXAMPLE_POLICIES, cedar_pdp, stderr_of, write};

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs a command that is expected to exit by itself, killing it after [`DEADLINE`].
fn run(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cedar-pdp");
    let mut guard = KillOnDrop(child);
    let stdout = read_all(guard.0.stdout.take().unwrap());
    let stderr = read_all(guard.0.stderr.take().unwrap());
    let status = wait_until(&mut guard.0, Instant::now() + DEADLINE)
        .unwrap_or_else(|| panic!("cedar-pdp did not exit within {DEADLINE:?}"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Reads `stream` to its end on a thread, so a full pipe never blocks the child.
fn read_all(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        bytes
    })
}

/// Everything left on `lines` until the stream closes, waiting at most a few seconds.
fn drain(lines: &mpsc::Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rest = Vec::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        rest.push(line);
    }
    rest
}

/// Polls `child` until it exits or `deadline` passes.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills and reaps the child when a test ends, however it ends, so no process leaks.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A policy directory with a syntax error on line 3 of `team/broken.cedar`.
fn broken_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "ok.cedar",
        "permit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "team/broken.cedar",
        "// line 1\npermit(principal, action, resource);\npermit(principal, action resource);\n",
    );
    dir
}

#[test]
fn serve_with_a_broken_policy_directory_exits_1_naming_the_file_and_line() {
    let dir = broken_dir();
    let mut command = cedar_pdp();
    command
        .arg("serve")
        .arg("--policies")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"]);
    let output = run(command);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("team/broken.cedar:3"), "stderr:\n{stderr}");
    assert!(
        !stderr.contains("ok.cedar"),
        "only the broken file is named:\n{stderr}"
    );
}

#[test]
fn serve_with_a_missing_policy_directory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let mut command = cedar_pdp();
    command
        .arg("serve")
        .arg("--policies")
        .arg(&missing)
        .args(["--listen", "127.0.0.1:0"]);
    let output = run(command);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&*missing.to_string_lossy()),
        "stderr names the directory:\n{stderr}"
    );
}

#[test]
fn serve_with_an_unknown_config_key_exits_2_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pdp.toml");
    std::fs::write(
        &config,
        format!("policies = {EXAMPLE_POLICIES:?}\nlisten = \"127.0.0.1:0\"\nlisten_adress = \"127.0.0.1:1\"\n"),
    )
    .unwrap();
    let mut command = cedar_pdp();
    command.arg("serve").arg("--config").arg(&config);
    let output = run(command);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&*config.to_string_lossy()),
        "stderr names the file:\n{stderr}"
    );
    assert!(
        stderr.contains("listen_adress"),
        "stderr names the key:\n{stderr}"
    );
}

#[test]
fn serve_with_an_unknown_key_in_the_limits_table_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pdp.toml");
    std::fs::write(
        &config,
        format!("policies = {EXAMPLE_POLICIES:?}\nlisten = \"127.0.0.1:0\"\n[limits]\nmax_entities = 5\n"),
    )
    .unwrap();
    let mut command = cedar_pdp();
    command.arg("serve").arg("--config").arg(&config);
    let output = run(command);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("max_entities"), "stderr:\n{stderr}");
}

#[test]
fn serve_refuses_an_ext_authz_mapping_that_could_fail_or_merge_callers_naming_the_key() {
    // A header named twice made every Check panic (a reset stream, which an Envoy set to
    // fail open lets through); an id of `{name}` alone gave a service account of that
    // name in any namespace the rights of ours.
    let cases = [
        (
            "headers = [\"x-tenant\", \"X-Tenant\"]\n",
            "ext_authz.headers[1]",
            "repeats ext_authz.headers[0]",
        ),
        (
            "claims = [\"email\", \"email\"]\n",
            "ext_authz.claims[1]",
            "repeats ext_authz.claims[0]",
        ),
        (
            "[[ext_authz.principal]]\nfrom = \"mtls\"\ntype = \"Service\"\n\
             match = \"spiffe://acme.example/ns/{namespace}/sa/{name}\"\nid = \"{name}\"\n",
            "ext_authz.principal[0].id",
            "leaves out {namespace}",
        ),
    ];
    for (table, key, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("pdp.toml");
        std::fs::write(
            &config,
            format!(
                "policies = {EXAMPLE_POLICIES:?}\nlisten = \"127.0.0.1:0\"\n[ext_authz]\n{table}"
            ),
        )
        .unwrap();
        let mut command = cedar_pdp();
        command.arg("serve").arg("--config").arg(&config);
        let output = run(command);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(2), "{table}\nstderr:\n{stderr}");
        assert!(
            stderr.contains(key),
            "{table}\nstderr names {key}:\n{stderr}"
        );
        assert!(stderr.contains(message), "{table}\nstderr:\n{stderr}");
    }
}

#[test]
fn the_policies_environment_variable_is_read() {
    let dir = broken_dir();
    let mut command = cedar_pdp();
    command
        .env("CEDAR_PDP_POLICIES", dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let output = run(command);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("team/broken.cedar:3"), "stderr:\n{stderr}");
}

#[test]
fn a_flag_overrides_its_environment_twin() {
    let broken = broken_dir();
    let missing = tempfile::tempdir().unwrap();
    let missing = missing.path().join("nope");
    let mut command = cedar_pdp();
    command
        .env("CEDAR_PDP_POLICIES", broken.path())
        .arg("serve")
        .arg("--policies")
        .arg(&missing)
        .args(["--listen", "127.0.0.1:0"]);
    let output = run(command);
    // The flag's missing directory (2), not the environment's broken one (1).
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
}

#[test]
fn serve_help_lists_the_main_flags() {
    let mut command = cedar_pdp();
    command.args(["serve", "--help"]);
    let output = run(command);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--policies", "--listen", "--policy-validation", "--config"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(help.contains("CEDAR_PDP_POLICIES"), "{help}");
}

/// Reads `stream` line by line on a thread, sending each line on the channel.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the JSON log line announcing the listening address.
fn listening_addr(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> SocketAddr {
    socket_addr(&listening_line(lines, seen), "addr")
}

/// The socket address in `field` of a JSON log line.
fn socket_addr(line: &serde_json::Value, field: &str) -> SocketAddr {
    let addr = line[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} field in {line}"));
    addr.parse()
        .unwrap_or_else(|e| panic!("{field} {addr:?} is not a socket address: {e}"))
}

/// Waits for the JSON log line that says `listening` and returns it, parsed.
fn listening_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no \"listening\" log line within {DEADLINE:?}; stdout:\n{seen:#?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("stdout closed before a \"listening\" log line; stdout:\n{seen:#?}")
            }
        };
        seen.push(line.clone());
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("a log line that is not JSON under --log-format json: {line}");
        };
        if json["message"] == "listening" {
            return json;
        }
    }
}

/// Speaks the first bytes of HTTP/2 to `addr` and checks the server answers with its
/// SETTINGS frame: the gRPC server is serving, not just bound.
fn assert_speaks_http2(addr: SocketAddr) {
    let mut stream =
        TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to the listening address");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("send the HTTP/2 preface");
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .expect("send SETTINGS");
    let mut header = [0u8; 9];
    stream
        .read_exact(&mut header)
        .expect("the server answers with a frame");
    assert_eq!(header[3], 4, "the first frame is SETTINGS: {header:?}");
}

#[test]
fn serve_starts_logs_its_address_and_exits_0_on_sigterm() {
    let child = cedar_pdp()
        .arg("serve")
        .args(["--policies", EXAMPLE_POLICIES])
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cedar-pdp");
    let mut guard = KillOnDrop(child);
    let stdout = lines_of(guard.0.stdout.take().unwrap());
    let stderr = lines_of(guard.0.stderr.take().unwrap());
    let mut seen = Vec::new();

    let addr = listening_addr(&stdout, &mut seen);
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(
        addr.port(),
        0,
        "the real port is logged, not the requested 0"
    );
    assert_speaks_http2(addr);

    let pid = guard.0.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");

    let status = wait_until(&mut guard.0, Instant::now() + DEADLINE);
    let stderr = drain(&stderr);
    seen.extend(drain(&stdout));
    let status = status.unwrap_or_else(|| {
        panic!("no exit within {DEADLINE:?} of SIGTERM; stdout:\n{seen:#?}\nstderr:\n{stderr:#?}")
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; stdout:\n{seen:#?}\nstderr:\n{stderr:#?}"
    );
}

/// An orchestrator may stop a pod the moment it is up. The SIGTERM handler must already
/// be in place when `listening` is logged, else the signal's default action kills the
/// process (no clean exit, calls in flight cut). Repeated because the window is short.
#[test]
fn sigterm_right_after_the_listening_line_still_exits_0() {
    for attempt in 1..=5 {
        let child = cedar_pdp()
            .arg("serve")
            .args(["--policies", EXAMPLE_POLICIES])
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cedar-pdp");
        let mut guard = KillOnDrop(child);
        let stdout = lines_of(guard.0.stdout.take().unwrap());
        let mut seen = Vec::new();
        listening_addr(&stdout, &mut seen);

        let pid = guard.0.id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let status = wait_until(&mut guard.0, Instant::now() + DEADLINE)
            .unwrap_or_else(|| panic!("no exit within {DEADLINE:?} of SIGTERM"));
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: SIGTERM just after the listening line gave {status:?}"
        );
    }
}

/// How often a test asks again while it waits for the server to catch up.
#[cfg(unix)]
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A `cedar-pdp serve` child on ephemeral ports that has logged `listening`, its stdout
/// and stderr read continuously on threads, killed when dropped.
#[cfg(unix)]
struct Server {
    child: KillOnDrop,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stdout line taken in so far.
    seen: Vec<String>,
    listening: serde_json::Value,
}

#[cfg(unix)]
impl Server {
    /// Starts `cedar-pdp serve` on `dir` with `flags` besides the ephemeral addresses and
    /// JSON logs, and waits for its `listening` line.
    fn start(dir: &Path, flags: &[&str]) -> Self {
        let child = cedar_pdp()
            .arg("serve")
            .arg("--policies")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cedar-pdp");
        let mut child = KillOnDrop(child);
        let stdout = lines_of(child.0.stdout.take().unwrap());
        let stderr = lines_of(child.0.stderr.take().unwrap());
        let mut seen = Vec::new();
        let listening = listening_line(&stdout, &mut seen);
        Self {
            child,
            stdout,
            stderr,
            seen,
            listening,
        }
    }

    /// The address `/metrics` is served on, from the `listening` line.
    fn metrics_addr(&self) -> SocketAddr {
        socket_addr(&self.listening, "metrics_addr")
    }

    /// The policy version served at start-up, from the `listening` line.
    fn first_version(&self) -> String {
        let version = self.listening["policy_version"]
            .as_str()
            .unwrap_or_else(|| panic!("no policy_version field in {}", self.listening));
        assert!(
            version.len() == 16 && version.bytes().all(|b| b.is_ascii_hexdigit()),
            "policy_version {version:?} is not 16 hex digits"
        );
        version.to_owned()
    }

    /// Stdout and stderr so far, for a failure message.
    fn output(&mut self) -> String {
        self.seen.extend(self.stdout.try_iter());
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        format!("stdout:\n{:#?}\nstderr:\n{stderr:#?}", self.seen)
    }

    /// Panics if the child has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.0.try_wait().expect("poll child") {
            panic!("cedar-pdp exited with {status:?}; {}", self.output());
        }
    }

    /// Sends `signal` (a name `kill` knows, such as `HUP`) to the child.
    fn signal(&self, signal: &str) {
        let pid = self.child.0.id().to_string();
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -{signal} {pid} failed");
    }

    /// Polls `/metrics` until `ready` holds for its body and returns that body; panics
    /// after [`DEADLINE`], or if the child exits meanwhile, saying it was waiting for `what`.
    fn metrics_until(&mut self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            self.assert_running();
            let (status, body) = http_get(self.metrics_addr(), "/metrics");
            assert_eq!(status, 200, "GET /metrics answered {status}:\n{body}");
            if ready(&body) {
                return body;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no {what} on /metrics within {DEADLINE:?}; last body:\n{body}\n{}",
                    self.output()
                );
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Waits for a stdout line for which `wanted` holds and returns it, parsed; panics
    /// after [`DEADLINE`] saying it was waiting for `what`.
    fn log_line_until(
        &mut self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let parsed = |line: &String| serde_json::from_str::<serde_json::Value>(line).ok();
        if let Some(json) = self.seen.iter().filter_map(parsed).find(|j| wanted(j)) {
            return json;
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let json = parsed(&line);
                    self.seen.push(line);
                    if let Some(json) = json.filter(|j| wanted(j)) {
                        return json;
                    }
                }
                Err(_) => panic!(
                    "no log line with {what} within {DEADLINE:?}; {}",
                    self.output()
                ),
            }
        }
    }

    /// Sends SIGTERM and checks the child exits 0 within [`DEADLINE`].
    fn stop(mut self) {
        self.signal("TERM");
        let status = wait_until(&mut self.child.0, Instant::now() + DEADLINE);
        self.seen.extend(drain(&self.stdout));
        let stderr = drain(&self.stderr);
        let seen = &self.seen;
        let status = status.unwrap_or_else(|| {
            panic!(
                "no exit within {DEADLINE:?} of SIGTERM; stdout:\n{seen:#?}\nstderr:\n{stderr:#?}"
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "exit status {status:?}; stdout:\n{seen:#?}\nstderr:\n{stderr:#?}"
        );
    }
}

/// Sends `GET path` over plain HTTP/1.1 to `addr` and returns the status code and body.
#[cfg(unix)]
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect to /metrics");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response to its end");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in the response:\n{response}"));
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "a chunked response, which this client does not decode:\n{head}"
    );
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 status line:\n{head}"));
    (status, body.to_owned())
}

/// The value of `series` (its name and labels exactly as exposed) in a Prometheus text
/// body, if the body has it.
#[cfg(unix)]
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
}

#[cfg(unix)]
const RELOAD_SUCCESSES: &str = r#"cedar_pdp_policy_reloads_total{result="success"}"#;
#[cfg(unix)]
const RELOAD_FAILURES: &str = r#"cedar_pdp_policy_reloads_total{result="failure"}"#;
#[cfg(unix)]
const POLICIES_LOADED: &str = "cedar_pdp_policies_loaded";
#[cfg(unix)]
const LAST_RELOAD_SUCCESSFUL: &str = "cedar_pdp_policy_last_reload_successful";

/// The `policy_info` series of `version`.
#[cfg(unix)]
fn policy_info(version: &str) -> String {
    format!(r#"cedar_pdp_policy_info{{version="{version}"}}"#)
}

/// A policy directory holding `a.cedar` with one permit.
#[cfg(unix)]
fn one_policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "permit(principal, action, resource);\n",
    );
    dir
}

#[cfg(unix)]
#[test]
fn sighup_reloads_the_policy_directory_when_watching_is_off() {
    let dir = one_policy_dir();
    let mut server = Server::start(dir.path(), &["--watch", "false"]);
    let first = server.first_version();
    let (status, body) = http_get(server.metrics_addr(), "/metrics");
    assert_eq!(status, 200, "GET /metrics answered {status}:\n{body}");
    assert_eq!(sample(&body, POLICIES_LOADED), Some(1.0), "{body}");
    assert_eq!(sample(&body, &policy_info(&first)), Some(1.0), "{body}");
    assert_eq!(sample(&body, RELOAD_SUCCESSES), Some(0.0), "{body}");

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("a.cedar"))
        .unwrap();
    file.write_all(b"forbid(principal, action, resource);\n")
        .unwrap();
    drop(file);
    server.signal("HUP");

    let body = server.metrics_until("two policies after a successful reload", |body| {
        sample(body, POLICIES_LOADED) == Some(2.0)
            && sample(body, RELOAD_SUCCESSES).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(
        sample(&body, &policy_info(&first)),
        None,
        "the replaced version is no longer exported:\n{body}"
    );
    assert_eq!(sample(&body, RELOAD_FAILURES), Some(0.0), "{body}");
    assert_eq!(sample(&body, LAST_RELOAD_SUCCESSFUL), Some(1.0), "{body}");

    server.log_line_until("\"reload requested\"", |json| {
        json["message"] == "reload requested"
    });
    let reloaded = server.log_line_until("\"policies reloaded\"", |json| {
        json["message"] == "policies reloaded"
    });
    assert_eq!(reloaded["old_version"], first.as_str(), "{reloaded}");
    let new = reloaded["new_version"]
        .as_str()
        .unwrap_or_else(|| panic!("no new_version in {reloaded}"));
    assert_ne!(new, first, "{reloaded}");
    assert_eq!(
        sample(&body, &policy_info(new)),
        Some(1.0),
        "the new version reads 1:\n{body}"
    );

    server.stop();
}

#[cfg(unix)]
#[test]
fn a_failed_reload_in_the_binary_shows_in_metrics_and_keeps_serving() {
    let dir = one_policy_dir();
    let mut server = Server::start(dir.path(), &[]);
    let first = server.first_version();

    write(
        dir.path(),
        "bad.cedar",
        "permit(principal, action resource);\n",
    );
    let body = server.metrics_until("a failed reload", |body| {
        sample(body, RELOAD_FAILURES).is_some_and(|n| n >= 1.0)
            && sample(body, LAST_RELOAD_SUCCESSFUL) == Some(0.0)
    });
    assert_eq!(
        sample(&body, POLICIES_LOADED),
        Some(1.0),
        "the last good snapshot still serves:\n{body}"
    );
    assert_eq!(sample(&body, &policy_info(&first)), Some(1.0), "{body}");
    let refused = server.log_line_until("a location in bad.cedar:1", |json| {
        json["location"]
            .as_str()
            .is_some_and(|location| location.contains("bad.cedar:1"))
    });
    assert_eq!(refused["level"], "ERROR", "{refused}");
    server.assert_running();
    assert_speaks_http2(socket_addr(&server.listening, "addr"));

    std::fs::remove_file(dir.path().join("bad.cedar")).unwrap();
    // Both in one condition: a scrape renders counters before gauges, so one taken while
    // the rebuild is being counted can show the gauge set and the counter not yet.
    let body = server.metrics_until("a successful reload after the fix", |body| {
        sample(body, LAST_RELOAD_SUCCESSFUL) == Some(1.0)
            && sample(body, RELOAD_SUCCESSES).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(sample(&body, POLICIES_LOADED), Some(1.0), "{body}");
    server.assert_running();
}

#[cfg(unix)]
#[test]
fn metrics_endpoint_answers_404_elsewhere() {
    let dir = one_policy_dir();
    let server = Server::start(dir.path(), &[]);
    let (status, body) = http_get(server.metrics_addr(), "/nope");
    assert_eq!(status, 404, "GET /nope answered {status}:\n{body}");
}

/// A call's log lines carry its request id (from the span), and its decision is audited
/// on stdout as a JSON line of its own.
#[cfg(unix)]
#[test]
fn a_calls_log_lines_and_audit_record_carry_its_request_id() {
    use cedar_pdp::proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient};
    let mut server = Server::start(
        Path::new(EXAMPLE_POLICIES),
        &["--log-level", "info,cedar_pdp=debug"],
    );
    let grpc = socket_addr(&server.listening, "addr");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = AuthorizerClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let uid = |ty: &str, id: &str| pb::EntityUid {
            r#type: format!("Platform::{ty}"),
            id: id.to_owned(),
        };
        // Refused (no principal): logged at debug inside the call's span.
        let mut refused = tonic::Request::new(pb::IsAuthorizedRequest {
            action: Some(uid("Action", "read")),
            resource: Some(uid("Document", "acme-roadmap-q3")),
            ..Default::default()
        });
        refused
            .metadata_mut()
            .insert("x-request-id", "cli-refused-1".parse().unwrap());
        client.is_authorized(refused).await.unwrap_err();
        // Denied: audited.
        let mut denied = tonic::Request::new(pb::IsAuthorizedRequest {
            principal: Some(uid("User", "carol")),
            action: Some(uid("Action", "write")),
            resource: Some(uid("Document", "acme-roadmap-q3")),
            ..Default::default()
        });
        denied
            .metadata_mut()
            .insert("x-request-id", "cli-denied-1".parse().unwrap());
        client.is_authorized(denied).await.unwrap();
    });
    let refusal = server.log_line_until("the refusal's log line", |json| {
        json["message"] == "request refused"
    });
    let text = refusal.to_string();
    assert!(
        text.contains("cli-refused-1"),
        "the span's request id is on the line: {text}"
    );
    let record = server.log_line_until("the deny's audit record", |json| {
        json["kind"] == "decision" && json["request_id"] == "cli-denied-1"
    });
    assert_eq!(record["allowed"], "deny");
    assert_eq!(record["principal"], r#"Platform::User::"carol""#);
    server.stop();
}
