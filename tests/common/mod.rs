//! Shared test harness: starts the real server on a loopback port chosen by the OS, gives
//! out clients, and shuts the server down and joins it at the end.
#![allow(dead_code)] // each test binary uses a different part of it

mod files;

#[allow(unused_imports, reason = "each binary uses a different part")]
pub use files::copy_dir;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use cedar_pdp::{
    Config,
    policy::{PolicyStore, Watcher},
    proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient},
    server::{ServeError, Server},
    telemetry::AuditSink,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use cedar_pdp::proto::envoy::{config::core::v3 as envoy_core, service::auth::v3 as envoy_auth};

/// The `cedar-pdp` binary Cargo built for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_cedar-pdp");
/// The repository's example policy directory, as a string for command lines.
pub const EXAMPLE_POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");

/// The binary with none of the caller's `CEDAR_PDP_*` or `RUST_LOG` settings, so that
/// only what a test sets applies.
pub fn cedar_pdp() -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CEDAR_PDP_") {
            command.env_remove(key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    command
}

/// What a finished command wrote on stderr, as text.
pub fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to `rel` under `dir`, creating folders on the way.
pub fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("create folders");
    std::fs::write(&path, text).expect("write file");
}

/// The repository's example policy directory.
pub fn example_policies() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

/// A running server, its policy watcher, and the means to stop them.
pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The AuthZEN port, when the config turned it on.
    pub authzen_addr: Option<SocketAddr>,
    pub store: Arc<PolicyStore>,
    pub watcher: Arc<Watcher>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    /// Serves `dir` with the default configuration.
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(Config {
            policies: dir.to_owned(),
            ..Config::default()
        })
        .await
    }

    /// Serves with `config` on 127.0.0.1, port 0 (gRPC and metrics), as `serve` does. An
    /// audit log configured for stdout is turned off: the test harness owns stdout.
    pub async fn start_with(mut config: Config) -> Self {
        if config.audit.sink == AuditSink::Stdout {
            config.audit.sink = AuditSink::Off;
        }
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.metrics_listen = "127.0.0.1:0".parse().unwrap();
        if config.authzen.listen.is_some() {
            config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
        }
        let server = Server::bind(config).await.expect("the server starts");
        let addr = server.grpc_addr();
        let authzen_addr = server.authzen_addr();
        let metrics_addr = server.metrics_addr();
        let store = server.store().clone();
        let watcher = server.watcher().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            authzen_addr,
            store,
            watcher,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The body of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        http_get(self.metrics_addr, "/metrics").await.1
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connects to the test server")
    }

    pub async fn client(&self) -> AuthorizerClient<Channel> {
        AuthorizerClient::new(self.channel().await)
    }

    /// Signals shutdown (as SIGTERM does) without waiting for the server to stop.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }

    /// Signals shutdown and waits for the server to finish cleanly.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("server stops within 30 s")
            .expect("server task does not panic")
            .expect("server ends without error");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}

pub fn uid(ty: &str, id: &str) -> pb::EntityUid {
    pb::EntityUid {
        r#type: ty.to_owned(),
        id: id.to_owned(),
    }
}

/// `Platform::<ty>::"<id>"` of the example set.
pub fn p(ty: &str, id: &str) -> pb::EntityUid {
    uid(&format!("Platform::{ty}"), id)
}

pub fn action(id: &str) -> pb::EntityUid {
    uid("Platform::Action", id)
}

pub fn request(
    principal: pb::EntityUid,
    action: pb::EntityUid,
    resource: pb::EntityUid,
) -> pb::IsAuthorizedRequest {
    pb::IsAuthorizedRequest {
        principal: Some(principal),
        action: Some(action),
        resource: Some(resource),
        ..Default::default()
    }
}

/// bob reads the Acme roadmap: allowed by the example policies.
pub fn bob_reads_roadmap() -> pb::IsAuthorizedRequest {
    request(
        p("User", "bob"),
        action("read"),
        p("Document", "acme-roadmap-q3"),
    )
}

pub fn boolean(b: bool) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Boolean(b)),
    }
}

pub fn long(n: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Long(n)),
    }
}

pub fn string(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String(s.to_owned())),
    }
}

pub fn entity_value(uid: pb::EntityUid) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Entity(uid)),
    }
}

pub fn set(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Set(pb::ValueList { values })),
    }
}

pub fn record(fields: &[(&str, pb::Value)]) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Record(pb::Record {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        })),
    }
}

pub fn ext(f: &str, arg: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Extension(pb::Extension {
            r#fn: f.to_owned(),
            arg: arg.to_owned(),
        })),
    }
}

pub fn context(fields: &[(&str, pb::Value)]) -> HashMap<String, pb::Value> {
    fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A context that passes every guardrail of the example set.
pub fn strong_context() -> HashMap<String, pb::Value> {
    context(&[
        ("mfa", boolean(true)),
        ("source_ip", ext("ip", "10.1.2.3")),
        ("now", ext("datetime", "2026-11-23T12:00:00Z")),
    ])
}

/// The determining policies of an answer.
pub fn reasons(response: &pb::IsAuthorizedResponse) -> Vec<&str> {
    response
        .determining_policies
        .iter()
        .map(String::as_str)
        .collect()
}

pub fn is_allow(response: &pb::IsAuthorizedResponse) -> bool {
    response.decision == pb::Decision::Allow as i32
}

/// The version the server reports for a directory holding exactly `files`.
pub fn version_of(files: &[(&str, &str)]) -> String {
    let dir = policy_dir(files);
    cedar_pdp::policy::load_dir(dir.path(), &cedar_pdp::policy::LoadOptions::default())
        .expect("the expected content loads")
        .snapshot
        .version()
        .to_owned()
}

/// Writes `files` (relative path → content) under a new temporary directory.
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        write(dir.path(), path, content);
    }
    dir
}

/// A plain HTTP/1.1 GET of `path` on `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, body.to_owned())
}

/// The value of the metric series `series` (name and labels exactly as rendered) in a
/// Prometheus text exposition, if it is there.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a metric value"))
}

/// Publishes `files` into `dir` as the kubelet updates a ConfigMap volume: the files go to
/// a new hidden folder `..<stamp>`, the `..data` link is swapped to it in one rename,
/// each visible name is a link through `..data`, and the folder it replaced is removed.
#[cfg(unix)]
pub fn configmap(dir: &Path, stamp: &str, files: &[(&str, &str)]) {
    use std::os::unix::fs::symlink;
    let data = format!("..{stamp}");
    std::fs::create_dir_all(dir.join(&data)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&data).join(name), text).unwrap();
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    symlink(&data, &tmp).expect("create ..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("create the visible link");
        }
    }
    if let Some(previous) = previous.filter(|p| *p != Path::new(&data)) {
        std::fs::remove_dir_all(dir.join(previous)).expect("remove the replaced folder");
    }
}

/// Reads the audit file until it has `n` lines (the writer is a thread of its own), each
/// parsed as JSON.
pub async fn audit_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    eventually(
        std::time::Duration::from_secs(10),
        "the audit records to be written",
        || async {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<_> = text.lines().map(str::to_owned).collect();
            (lines.len() >= n).then_some(lines)
        },
    )
    .await
    .iter()
    .map(|line| serde_json::from_str(line).expect("each audit line is JSON"))
    .collect()
}

/// Polls `check` every 10 ms until it gives `Some`, failing the test with `what` if
/// `within` passes first.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The fenced block of `lang` in `docs/envoy.md` whose first line contains `marker` (or
/// the first such block when `marker` is empty): the docs are what the tests run.
pub fn envoy_doc_block(lang: &str, marker: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/envoy.md");
    let text = std::fs::read_to_string(path).expect("docs/envoy.md reads");
    let fence = format!("```{lang}\n");
    let mut rest = text.as_str();
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("\n```").expect("a fenced block is closed");
        let block = &body[..=end];
        if block.lines().next().unwrap_or_default().contains(marker) {
            return block.to_owned();
        }
        rest = &body[end..];
    }
    panic!("docs/envoy.md has no ```{lang} block starting with {marker:?}");
}

/// The `[ext_authz]` settings of the example config in `docs/envoy.md`.
pub fn docs_ext_authz() -> cedar_pdp::config::ExtAuthzSettings {
    let settings: cedar_pdp::config::Settings =
        toml::from_str(&envoy_doc_block("toml", "[ext_authz]")).expect("the docs' TOML parses");
    *settings
        .ext_authz
        .expect("the docs' TOML has an [ext_authz] table")
}

// --- Envoy checks as the HTTP ext_authz filter sends them ------------------------------

/// A protobuf `Value` holding `s`.
pub fn string_value(s: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    }
}

/// JWT payload metadata as Envoy's jwt_authn filter writes it.
pub fn jwt(claims: &[(&str, prost_types::Value)]) -> envoy_core::Metadata {
    let payload = prost_types::Struct {
        fields: claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    };
    let namespace = prost_types::Struct {
        fields: [(
            "jwt_payload".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(payload)),
            },
        )]
        .into(),
    };
    envoy_core::Metadata {
        filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), namespace)].into(),
        ..Default::default()
    }
}

/// An HTTP check from Envoy: `method path` on `docs.acme.example`, with a verified token's
/// `metadata` and the downstream `peer` when given.
pub fn check(
    method: &str,
    path: &str,
    metadata: Option<envoy_core::Metadata>,
    peer: Option<envoy_auth::attribute_context::Peer>,
) -> envoy_auth::CheckRequest {
    envoy_auth::CheckRequest {
        attributes: Some(envoy_auth::AttributeContext {
            source: peer,
            request: Some(envoy_auth::attribute_context::Request {
                time: None,
                http: Some(envoy_auth::attribute_context::HttpRequest {
                    id: "req-ext-1".to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "docs.acme.example".to_owned(),
                    headers: HashMap::from([("user-agent".to_owned(), "curl/8".to_owned())]),
                    ..Default::default()
                }),
            }),
            metadata_context: metadata,
            ..Default::default()
        }),
    }
}
