//! The `cedar-pdp` binary as an operator runs it: exit codes, error messages on stderr,
//! start-up on an ephemeral port and a clean exit on SIGTERM.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_cedar-pdp");
const EXAMPLE_POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
const DEADLINE: Duration = Duration::from_secs(30);

/// The binary with none of the caller's `CEDAR_PDP_*` or `RUST_LOG` settings, so that
/// only what a test sets applies.
fn cedar_pdp() -> Command {
    let mut command = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CEDAR_PDP_") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG").stdin(Stdio::null());
    command
}

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

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
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
            let addr = json["addr"]
                .as_str()
                .unwrap_or_else(|| panic!("no addr field in {line}"));
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("addr {addr:?} is not a socket address: {e}"));
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
