//! What the benchmarks share: timing loops, quantiles, the table they print, and a real
//! server on a loopback port.
#![allow(dead_code)] // each benchmark uses a different part of it

pub mod load;

/// Directory helpers shared with the integration tests.
#[path = "../../tests/common/files.rs"]
mod files;
#[allow(unused_imports, reason = "each binary uses a different part")]
pub use files::copy_dir;

use std::{
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use cedar_pdp::{
    Config,
    config::AuditSink,
    policy::PolicyStore,
    proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient},
    server::Server,
};
use tonic::transport::Channel;

/// Policies in the large directory of [`large_dir`].
pub const POLICIES: usize = 10_000;
/// Files they are spread over.
pub const FILES: usize = 100;

const SCHEMA: &str = "entity User;\n\
    entity Doc = { owner: User };\n\
    action read, write appliesTo { principal: [User], resource: [Doc], context: { level: Long } };\n";

/// Writes the 10,000-policy directory: policy `p{n}` is about user `u{n}` only (a permit,
/// or a forbid for every tenth), for reading when `n` is even and writing when odd.
pub fn large_dir(dir: &std::path::Path) {
    std::fs::write(dir.join("schema.cedarschema"), SCHEMA).unwrap();
    for file in 0..FILES {
        let mut text = String::new();
        for i in 0..POLICIES / FILES {
            let n = file * (POLICIES / FILES) + i;
            let effect = if n % 10 == 9 { "forbid" } else { "permit" };
            let action = if n.is_multiple_of(2) { "read" } else { "write" };
            text.push_str(&format!(
                "@id(\"p{n}\")\n{effect}(principal == User::\"u{n}\", action == Action::\"{action}\", resource)\n  when {{ context.level > {} && resource.owner != principal }};\n",
                n % 7
            ));
        }
        std::fs::write(dir.join(format!("team{file:03}.cedar")), text).unwrap();
    }
}

const TENANTS: usize = 1_000;

const TENANT_SCHEMA: &str = "entity Tenant;\n\
    entity User in [Tenant] = { suspended: Bool };\n\
    entity Doc in [Tenant];\n\
    action read, write appliesTo { principal: [User], resource: [Doc], context: { level: Long } };\n";

/// `n` policies: policy `p{i}` lets user `u{i}` read (even `i`) or write (odd) the
/// documents of tenant `t{i % 1000}` at a level; two forbids apply to every request.
pub fn tenant_dir(dir: &std::path::Path, n: usize) {
    std::fs::write(dir.join("schema.cedarschema"), TENANT_SCHEMA).unwrap();
    let mut text = String::from(
        "@id(\"no-suspended\")\nforbid(principal, action, resource) when { principal.suspended };\n\
         @id(\"no-level-0\")\nforbid(principal, action, resource) when { context.level == 0 };\n",
    );
    for i in 0..n {
        let action = if i % 2 == 0 { "read" } else { "write" };
        text.push_str(&format!(
            "@id(\"p{i}\")\npermit(principal == User::\"u{i}\", action == Action::\"{action}\", resource in Tenant::\"t{}\") when {{ context.level > {} }};\n",
            i % TENANTS,
            i % 3
        ));
    }
    std::fs::write(dir.join("policies.cedar"), text).unwrap();
    let mut entities = vec![serde_json::json!({
        "uid": {"type": "User", "id": "u7"}, "attrs": {"suspended": false},
        "parents": [{"type": "Tenant", "id": "t7"}]
    })];
    entities.push(serde_json::json!({
        "uid": {"type": "Doc", "id": "d7"}, "attrs": {}, "parents": [{"type": "Tenant", "id": "t7"}]
    }));
    std::fs::write(
        dir.join("entities.json"),
        serde_json::to_string(&entities).unwrap(),
    )
    .unwrap();
}

/// Users and documents of [`rotating_dir`]: `u{i}` and `d{i}`, of tenant `t{i}`.
pub const ROTATING: usize = 1_000;

/// [`tenant_dir`] with `n` policies, storing [`ROTATING`] users and as many documents,
/// user `u{i}` and document `d{i}` in tenant `t{i}`: questions that rotate over them all
/// are decided on stored entities, no one question standing for the load.
pub fn rotating_dir(dir: &std::path::Path, n: usize) {
    tenant_dir(dir, n);
    let mut entities = Vec::with_capacity(2 * ROTATING);
    for i in 0..ROTATING {
        let tenant = serde_json::json!([{"type": "Tenant", "id": format!("t{i}")}]);
        entities.push(serde_json::json!({
            "uid": {"type": "User", "id": format!("u{i}")}, "attrs": {"suspended": false},
            "parents": tenant.clone()
        }));
        entities.push(serde_json::json!({
            "uid": {"type": "Doc", "id": format!("d{i}")}, "attrs": {}, "parents": tenant
        }));
    }
    std::fs::write(
        dir.join("entities.json"),
        serde_json::to_string(&entities).unwrap(),
    )
    .unwrap();
}

/// Question `i` of the rotating load on [`rotating_dir`]: user `u{i}` reads (`i` even) or
/// writes document `d{i}` at level 2, and whether policy `p{i}` allows it (`level > i % 3`).
pub fn rotating_question(i: usize) -> (pb::IsAuthorizedRequest, bool) {
    let i = i % ROTATING;
    let action = if i.is_multiple_of(2) { "read" } else { "write" };
    let mut request = request(
        ("User", &format!("u{i}")),
        ("Action", action),
        ("Doc", &format!("d{i}")),
    );
    request.context = std::collections::HashMap::from([(
        "level".to_owned(),
        pb::Value {
            kind: Some(pb::value::Kind::Long(2)),
        },
    )]);
    (request, i % 3 != 2)
}

/// The uid written as `text` (a benchmark's own, so known to parse).
pub fn uid(text: &str) -> cedar_policy::EntityUid {
    text.parse().expect("a valid uid")
}

/// The example set's question: bob reads the Q3 roadmap, with `context`.
pub fn bob_reads(context: cedar_pdp::engine::ContextInput) -> cedar_pdp::engine::Query {
    cedar_pdp::engine::Query {
        principal: uid(r#"Platform::User::"bob""#),
        action: uid(r#"Platform::Action::"read""#),
        resource: uid(r#"Platform::Document::"acme-roadmap-q3""#),
        context,
    }
}

/// The context the example set's policies read for bob: MFA done, from 10.1.2.3.
pub fn bob_context() -> cedar_policy::Context {
    use cedar_policy::RestrictedExpression;
    cedar_policy::Context::from_pairs([
        ("mfa".to_owned(), RestrictedExpression::new_bool(true)),
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip("10.1.2.3"),
        ),
    ])
    .expect("a valid context")
}

/// The question the tenant benchmarks ask: may user `u7` write document `d7` of its
/// tenant (policy `p7` says yes).
pub fn u7_writes_d7() -> cedar_pdp::engine::Query {
    cedar_pdp::engine::Query {
        principal: uid(r#"User::"u7""#),
        action: uid(r#"Action::"write""#),
        resource: uid(r#"Doc::"d7""#),
        context: cedar_pdp::engine::ContextInput::Value(
            cedar_policy::Context::from_json_value(serde_json::json!({"level": 2}), None).unwrap(),
        ),
    }
}

/// The first number among the benchmark's arguments, else `default`.
pub fn iterations_arg(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Times `iterations` calls of `f` after a tenth as many warm-up calls and returns the
/// sorted per-call durations.
pub fn measure(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..iterations / 10 {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples
}

/// The `quantile` of sorted `samples`.
pub fn at(samples: &[Duration], quantile: f64) -> Duration {
    samples[((samples.len() - 1) as f64 * quantile) as usize]
}

/// Prints one row per case: p50 and p99 in µs, and p50 as a ratio of the first case's.
pub fn print_table(results: &[(impl AsRef<str>, Vec<Duration>)]) {
    let base = at(&results[0].1, 0.5).as_secs_f64();
    println!(
        "{:<44} {:>10} {:>10} {:>8}",
        "case", "p50 µs", "p99 µs", "x p50"
    );
    for (name, samples) in results {
        let p50 = at(samples, 0.5);
        println!(
            "{:<44} {:>10.1} {:>10.1} {:>8.2}",
            name.as_ref(),
            p50.as_secs_f64() * 1e6,
            at(samples, 0.99).as_secs_f64() * 1e6,
            p50.as_secs_f64() / base
        );
    }
}

/// The example set served with an Envoy mapping: a JWT subject (as Envoy's `jwt_authn`
/// verified it), a route template, the mapped context (method, path, host, source_ip,
/// headers, params); for checks made with [`check_request`].
pub fn ext_authz_config(dir: &Path) -> Config {
    Config {
        ext_authz: toml::from_str(
            r#"
            action_type = "Platform::Action"
            methods = { GET = "read" }
            headers = ["user-agent"]
            upstream_headers = { "x-cedar-policy-version" = "{policy_version}" }
            [[principal]]
            from = "jwt"
            type = "Platform::User"
            [[routes]]
            path = "/projects/{project}/docs/{doc}"
            resource_type = "Platform::Document"
            resource_id = "{doc}"
            "#,
        )
        .expect("the benchmark's mapping parses"),
        ..config(dir)
    }
}

/// A check as Envoy sends it for `GET path` with a verified token for `sub`.
pub fn check_request(
    sub: &str,
    path: &str,
) -> cedar_pdp::proto::envoy::service::auth::v3::CheckRequest {
    use cedar_pdp::proto::envoy::{
        config::core::v3::{Address, Metadata, SocketAddress, address},
        service::auth::v3::{
            AttributeContext,
            attribute_context::{self, HttpRequest, Peer},
        },
    };
    use prost_types::{Struct, Value, value::Kind};
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let payload = Struct {
        fields: [("sub".to_owned(), text(sub))].into(),
    };
    let jwt = Struct {
        fields: [(
            "jwt_payload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(payload)),
            },
        )]
        .into(),
    };
    cedar_pdp::proto::envoy::service::auth::v3::CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "10.1.2.3".to_owned(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(attribute_context::Request {
                time: None,
                http: Some(HttpRequest {
                    id: "bench".to_owned(),
                    method: "GET".to_owned(),
                    path: path.to_owned(),
                    host: "docs.acme.example".to_owned(),
                    headers: [
                        ("user-agent".to_owned(), "bench/1".to_owned()),
                        ("authorization".to_owned(), "Bearer x.y.z".to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                }),
            }),
            metadata_context: Some(Metadata {
                filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), jwt)].into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// New user `id` of the example's Acme tenant, in `parents`, as a call sends it (the
/// attributes the example schema gives users).
pub fn acme_user(
    id: &str,
    parents: Vec<cedar_policy::EntityUid>,
) -> cedar_pdp::engine::EntityInput {
    use cedar_policy::{EntityUid, RestrictedExpression};
    let uid = |text: &str| text.parse::<EntityUid>().expect("a valid uid");
    cedar_pdp::engine::EntityInput {
        uid: uid(&format!(r#"Platform::User::"{id}""#)),
        attrs: vec![
            (
                "tenant".to_owned(),
                RestrictedExpression::new_entity_uid(uid(r#"Platform::Tenant::"acme""#)),
            ),
            (
                "email".to_owned(),
                RestrictedExpression::new_string(format!("{id}@acme.example")),
            ),
            (
                "suspended".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
            (
                "contractor".to_owned(),
                RestrictedExpression::new_bool(false),
            ),
        ],
        parents,
        tags: vec![],
    }
}

/// The configuration the benchmarks serve `dir` with: the defaults, audit log off.
pub fn config(dir: &Path) -> Config {
    let mut config = Config {
        policies: dir.to_owned(),
        ..Config::default()
    };
    config.audit.sink = AuditSink::Off;
    config
}

/// Serves `config` on loopback ports the OS picks, for the rest of the process, as
/// `serve` would; the gRPC address and the store it serves.
pub fn serve(
    runtime: &tokio::runtime::Runtime,
    mut config: Config,
) -> (SocketAddr, Arc<PolicyStore>) {
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics_listen = "127.0.0.1:0".parse().unwrap();
    runtime.block_on(async {
        let server = Server::bind(config)
            .await
            .expect("the benchmark server starts");
        let served = (server.grpc_addr(), server.store().clone());
        tokio::spawn(server.run(std::future::pending()));
        served
    })
}

/// A client connected to `addr`.
pub fn client(runtime: &tokio::runtime::Runtime, addr: SocketAddr) -> AuthorizerClient<Channel> {
    runtime.block_on(async {
        AuthorizerClient::connect(format!("http://{addr}"))
            .await
            .expect("connects to the benchmark server")
    })
}

/// Times `iterations` IsAuthorized calls of `request` one after another (after a tenth
/// as many warm-up calls), checking each answer is `allow`; sorted durations.
pub fn grpc_samples(
    runtime: &tokio::runtime::Runtime,
    client: &mut AuthorizerClient<Channel>,
    request: &pb::IsAuthorizedRequest,
    allow: bool,
    iterations: usize,
) -> Vec<Duration> {
    runtime.block_on(async {
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations + iterations / 10 {
            let start = Instant::now();
            let response = client
                .is_authorized(request.clone())
                .await
                .expect("the call succeeds")
                .into_inner();
            let elapsed = start.elapsed();
            assert_eq!(response.decision == pb::Decision::Allow as i32, allow);
            if i >= iterations / 10 {
                samples.push(elapsed);
            }
        }
        samples.sort_unstable();
        samples
    })
}

/// A request naming `principal`, `action` and `resource` as `Type::"id"` pairs.
pub fn request(
    principal: (&str, &str),
    action: (&str, &str),
    resource: (&str, &str),
) -> pb::IsAuthorizedRequest {
    let uid = |(ty, id): (&str, &str)| pb::EntityUid {
        r#type: ty.into(),
        id: id.into(),
    };
    pb::IsAuthorizedRequest {
        principal: Some(uid(principal)),
        action: Some(uid(action)),
        resource: Some(uid(resource)),
        ..Default::default()
    }
}

/// `VmRSS` and `VmHWM` of process `pid`, in MiB (Linux).
pub fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .expect("a memory field")
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The allocator the server binary runs with (src/main.rs), so that benchmarks measure
/// what is deployed; it counts the bytes it holds only while [`held_by`] asks.
#[global_allocator]
static GLOBAL: Counted = Counted;

/// mimalloc, counting what it holds while [`COUNTING`] is set (a read of a flag no
/// thread writes otherwise: nothing a timed benchmark would notice).
struct Counted;

/// Whether allocations are counted now.
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Bytes allocated and not freed while counting.
static HELD: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: every call goes to mimalloc unchanged; only a count is kept beside.
unsafe impl std::alloc::GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's layout, as mimalloc requires.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count(size as isize - layout.size() as isize);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, size) }
    }
}

fn count(bytes: isize) {
    use std::sync::atomic::Ordering::Relaxed;
    if COUNTING.load(Relaxed) {
        HELD.fetch_add(bytes, Relaxed);
    }
}

/// What `make` returns, and the MiB of heap it holds (allocated while making it, not
/// freed by then). Count one thing at a time.
pub fn held_by<T>(make: impl FnOnce() -> T) -> (T, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    HELD.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let made = make();
    COUNTING.store(false, Relaxed);
    (made, HELD.load(Relaxed) as f64 / (1024.0 * 1024.0))
}
