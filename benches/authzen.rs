//! The AuthZEN API against the gRPC API, and search at 100,000 stored resources.
//!
//! 1. One evaluation over AuthZEN (HTTP/1.1, one kept-alive connection) against the same
//!    question through `cedarpdp.v1` IsAuthorized (one channel), alternated A/B/A/B in one
//!    run: p50 and p99 per call, one call at a time.
//! 2. Resource search pages of 50 over 100,000 documents in 1,000 folders (100 each):
//!    a user whose team may `view` its folder (the policy index narrows the candidates to
//!    the folder), first page and a later one; `read` under an attribute condition
//!    (`resource.owner == principal`: every document of the type is a candidate), once
//!    where the match comes early and once where nothing matches and the page ends at the
//!    evaluation bound; and a subject and an action search.
//!
//! Run: `cargo bench --bench authzen` (optionally `-- <iterations>`, default 2000).

mod support;

use std::{net::SocketAddr, time::Duration, time::Instant};

use cedar_pdp::server::Server;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::*;

const FOLDERS: usize = 1_000;
const PER_FOLDER: usize = 100;

/// 100,000 documents in 1,000 folders, 2,000 users in 1,000 teams, one team per folder.
fn search_dir(dir: &std::path::Path) {
    let mut policies = String::new();
    for f in 0..FOLDERS {
        policies.push_str(&format!(
            "permit(principal in team::\"t{f}\", action == Action::\"view\", resource in folder::\"f{f}\");\n"
        ));
    }
    policies.push_str(
        "permit(principal, action == Action::\"read\", resource is document) when { resource has owner && resource.owner == principal };\n",
    );
    std::fs::write(dir.join("search.cedar"), policies).unwrap();
    let mut entities = Vec::new();
    for f in 0..FOLDERS {
        entities.push(
            json!({"uid": {"type": "folder", "id": format!("f{f}")}, "attrs": {}, "parents": []}),
        );
        entities.push(
            json!({"uid": {"type": "team", "id": format!("t{f}")}, "attrs": {}, "parents": []}),
        );
        for u in 0..2 {
            entities.push(
                json!({"uid": {"type": "user", "id": format!("u{f}-{u}")}, "attrs": {},
                                 "parents": [{"type": "team", "id": format!("t{f}")}]}),
            );
        }
        for d in 0..PER_FOLDER {
            let mut doc = json!({"uid": {"type": "document", "id": format!("d{f:04}-{d:03}")},
                                 "attrs": {}, "parents": [{"type": "folder", "id": format!("f{f}")}]});
            if d == 0 {
                doc["attrs"]["owner"] = json!({"__entity": {"type": "user", "id": "u7-0"}});
            }
            entities.push(doc);
        }
    }
    std::fs::write(
        dir.join("entities.json"),
        Value::Array(entities).to_string(),
    )
    .unwrap();
}

/// A kept-alive HTTP/1.1 connection to the AuthZEN port.
struct Http {
    sender: http1::SendRequest<Full<bytes::Bytes>>,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        Self {
            sender,
            host: addr.to_string(),
        }
    }

    async fn post(&mut self, path: &str, body: &str) -> Value {
        let request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .unwrap();
        // A kept-alive connection takes the next request once the last one's end is seen.
        self.sender.ready().await.unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }
}

/// Times `iterations` POSTs of `body` to `path` one after another (after a tenth as many
/// warm-up calls), checking each answer; sorted durations.
fn timed(
    runtime: &tokio::runtime::Runtime,
    http: &mut Http,
    path: &str,
    body: &str,
    iterations: usize,
    check: impl Fn(&Value),
) -> Vec<Duration> {
    runtime.block_on(async {
        for _ in 0..iterations / 10 {
            check(&http.post(path, body).await);
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let start = Instant::now();
            let answer = http.post(path, body).await;
            samples.push(start.elapsed());
            check(&answer);
        }
        samples.sort_unstable();
        samples
    })
}

fn main() {
    let iterations = iterations_arg(2_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    search_dir(dir.path());
    let mut config = config(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = "127.0.0.1:0".parse().unwrap();
    config.authzen.listen = Some("127.0.0.1:0".parse().unwrap());
    let (grpc, authzen) = runtime.block_on(async {
        let server = Server::bind(config).await.expect("the server starts");
        let addrs = (server.grpc_addr(), server.authzen_addr().unwrap());
        tokio::spawn(server.run(std::future::pending()));
        addrs
    });
    let mut client = client(&runtime, grpc);
    let mut http = runtime.block_on(Http::connect(authzen));

    // 1. One evaluation, AuthZEN against IsAuthorized, A/B/A/B.
    let question = request(
        ("user", "u7-0"),
        ("Action", "view"),
        ("document", "d0007-042"),
    );
    let evaluation = json!({"subject": {"type": "user", "id": "u7-0"}, "action": {"name": "view"},
                            "resource": {"type": "document", "id": "d0007-042"}})
    .to_string();
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    for round in 1..=2 {
        rows.push((
            format!("IsAuthorized (gRPC), round {round}"),
            grpc_samples(&runtime, &mut client, &question, true, iterations),
        ));
        let samples = timed(
            &runtime,
            &mut http,
            "/access/v1/evaluation",
            &evaluation,
            iterations,
            |answer| assert_eq!(answer["decision"], json!(true)),
        );
        rows.push((
            format!("AuthZEN evaluation (HTTP/1.1), round {round}"),
            samples,
        ));
    }
    print_table(&rows);
    println!();

    // 2. Search pages of 50 at 100,000 documents.
    let searches = [
        (
            "resource search, view (folder of 100), page 1",
            "/access/v1/search/resource",
            json!({"subject": {"type": "user", "id": "u7-0"}, "action": {"name": "view"},
                   "resource": {"type": "document"}}),
            50,
        ),
        (
            "resource search, read (owner condition), limit 1: 701st candidate",
            "/access/v1/search/resource",
            json!({"subject": {"type": "user", "id": "u7-0"}, "action": {"name": "read"},
                   "resource": {"type": "document"}, "page": {"limit": 1}}),
            1,
        ),
        (
            "resource search, read, no match: stops at the 10,000-evaluation bound",
            "/access/v1/search/resource",
            json!({"subject": {"type": "user", "id": "u9-1"}, "action": {"name": "read"},
                   "resource": {"type": "document"}}),
            0,
        ),
        (
            "subject search, view d0007-042",
            "/access/v1/search/subject",
            json!({"subject": {"type": "user"}, "action": {"name": "view"},
                   "resource": {"type": "document", "id": "d0007-042"}}),
            2,
        ),
        (
            "action search, u7-0 on d0007-000",
            "/access/v1/search/action",
            json!({"subject": {"type": "user", "id": "u7-0"},
                   "resource": {"type": "document", "id": "d0007-000"}}),
            2,
        ),
    ];
    let search_iterations = (iterations / 10).max(20);
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    for (name, path, body, expect) in searches {
        let body = body.to_string();
        let samples = timed(
            &runtime,
            &mut http,
            path,
            &body,
            search_iterations,
            |answer| {
                assert_eq!(answer["page"]["count"], json!(expect), "{answer}");
            },
        );
        rows.push((name.to_owned(), samples));
    }
    // A later page of the folder search: after the first page's token.
    let first = runtime.block_on(
        http.post(
            "/access/v1/search/resource",
            &json!({"subject": {"type": "user", "id": "u7-0"}, "action": {"name": "view"},
                "resource": {"type": "document"}})
            .to_string(),
        ),
    );
    let token = first["page"]["next_token"].as_str().unwrap().to_owned();
    let second = json!({"subject": {"type": "user", "id": "u7-0"}, "action": {"name": "view"},
                        "resource": {"type": "document"}, "page": {"token": token}})
    .to_string();
    let samples = timed(
        &runtime,
        &mut http,
        "/access/v1/search/resource",
        &second,
        search_iterations,
        |answer| assert_eq!(answer["page"]["count"], json!(50)),
    );
    rows.push(("resource search, view, page 2 (token)".to_owned(), samples));
    print_table(&rows);
}
