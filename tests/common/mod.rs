//! Shared test harness: starts the real server on a loopback port chosen by the OS, gives
//! out clients, and shuts the server down and joins it at the end.
#![allow(dead_code)] // each test binary uses a different part of it

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use cedar_pdp::{
    Config, api,
    policy::{LoadOptions, PolicyStore},
    proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// The repository's example policy directory.
pub fn example_policies() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

/// A running server and the means to stop it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<PolicyStore>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), api::ServeError>>>,
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

    /// Serves with `config` on 127.0.0.1, port 0.
    pub async fn start_with(config: Config) -> Self {
        let options = LoadOptions::new(config.policy_validation, &config.limits);
        let (store, _warnings) =
            PolicyStore::open(&config.policies, options).expect("policies load");
        let store = Arc::new(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let serving = store.clone();
        let task = tokio::spawn(async move {
            api::serve(&config, serving, listener, async {
                let _ = rx.await;
            })
            .await
        });
        Self {
            addr,
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
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

    /// Signals shutdown and waits for the server to finish cleanly.
    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).ok();
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

pub fn is_allow(response: &pb::IsAuthorizedResponse) -> bool {
    response.decision == pb::Decision::Allow as i32
}

/// Writes `files` (relative path → content) under a new temporary directory.
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}
