//! TLS and mutual TLS on the gRPC port, with certificates made here for each test: the
//! handshake, clients refused for having no certificate or one from another CA, the
//! per-API caller allow-lists, the caller in the audit record, and certificate rotation
//! picked up without a restart or a dropped connection.

mod common;

use std::{path::Path, time::Duration};

use cedar_pdp::{
    config::{Config, TlsConfig, TlsFiles},
    proto::{
        cedarpdp::v1::{GetPolicySetInfoRequest, authorizer_client::AuthorizerClient},
        envoy::service::auth::v3::{CheckRequest, authorization_client::AuthorizationClient},
    },
    telemetry::{AuditOptions, AuditSink},
};
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A certificate authority of the tests.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate and its key, both PEM, naming `dns` and `uris` as SANs.
    fn leaf(&self, dns: &[&str], uris: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The server's certificate: `localhost`, as the clients below ask for.
    fn server(&self) -> (String, String) {
        self.leaf(&["localhost"], &[])
    }
}

const GATEWAY: &str = "spiffe://acme.example/ns/edge/sa/gateway";
const ENVOY: &str = "spiffe://acme.example/ns/mesh/sa/envoy";
const STRANGER: &str = "spiffe://acme.example/ns/other/sa/batch";

/// Writes the server's files into `dir`: `server.crt`, `server.key`, and `ca.crt` when
/// mutual TLS is asked for.
fn write_files(dir: &Path, server: &(String, String), client_ca: Option<&Ca>) -> TlsFiles {
    std::fs::write(dir.join("server.crt"), &server.0).unwrap();
    std::fs::write(dir.join("server.key"), &server.1).unwrap();
    if let Some(ca) = client_ca {
        std::fs::write(dir.join("ca.crt"), &ca.pem).unwrap();
    }
    TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_ca: client_ca.map(|_| dir.join("ca.crt")),
    }
}

fn tls_config(files: TlsFiles, authorizer: Option<&[&str]>, ext_authz: Option<&[&str]>) -> Config {
    let list = |ids: Option<&[&str]>| ids.map(|ids| ids.iter().map(|s| (*s).to_owned()).collect());
    Config {
        policies: example_policies(),
        tls: Some(TlsConfig {
            files,
            authorizer_callers: list(authorizer),
            ext_authz_callers: list(ext_authz),
            authzen_callers: None,
            request_entities_replace_callers: None,
        }),
        ..Config::default()
    }
}

/// A channel to `server` over TLS, trusting `trust` and presenting `identity`.
async fn connect(
    server: &TestServer,
    trust: &Ca,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&trust.pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

/// Whether one IsAuthorized over a fresh connection succeeds (`Err` with why not).
async fn decides(
    server: &TestServer,
    trust: &Ca,
    identity: Option<&(String, String)>,
) -> Result<bool, String> {
    let channel = connect(server, trust, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let answer = AuthorizerClient::new(channel)
        .is_authorized(bob_reads_roadmap())
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(is_allow(answer.get_ref()))
}

#[tokio::test]
async fn tls_serves_decisions_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let files = write_files(dir.path(), &ca.server(), None);
    let server = TestServer::start_with(tls_config(files, None, None)).await;

    assert_eq!(decides(&server, &ca, None).await, Ok(true));

    // A plaintext client gets no answer at all.
    let plaintext = async {
        let mut client = AuthorizerClient::new(server.channel().await);
        client.is_authorized(bob_reads_roadmap()).await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), plaintext)
        .await
        .expect("a plaintext call ends, refused");
    assert!(outcome.is_err(), "plaintext answered: {outcome:?}");

    // A client that does not trust the server's CA refuses the server.
    let other = Ca::new("someone else");
    assert!(decides(&server, &other, None).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = write_files(dir.path(), &server_ca.server(), Some(&client_ca));
    let server = TestServer::start_with(tls_config(files, None, None)).await;

    let gateway = client_ca.leaf(&[], &[GATEWAY]);
    assert_eq!(decides(&server, &server_ca, Some(&gateway)).await, Ok(true));

    let refused = decides(&server, &server_ca, None).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    let forged = Ca::new("client CA").leaf(&[], &[GATEWAY]);
    let refused = decides(&server, &server_ca, Some(&forged)).await;
    assert!(refused.is_err(), "a certificate of another CA: {refused:?}");

    // The server is still up and serving the good client.
    assert_eq!(decides(&server, &server_ca, Some(&gateway)).await, Ok(true));
    server.stop().await;
}

#[tokio::test]
async fn each_api_admits_only_its_callers_and_counts_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = write_files(dir.path(), &server_ca.server(), Some(&client_ca));
    let audit_path = dir.path().join("audit.jsonl");
    let mut config = tls_config(
        files,
        Some(&[GATEWAY, "pdp-client.acme.internal"]),
        Some(&[ENVOY]),
    );
    config.audit = AuditOptions {
        sink: AuditSink::File(audit_path.clone()),
        ..AuditOptions::default()
    };
    let server = TestServer::start_with(config).await;

    let gateway = client_ca.leaf(&[], &[GATEWAY]);
    let envoy = client_ca.leaf(&[], &[ENVOY]);
    let stranger = client_ca.leaf(&["batch.acme.internal"], &[STRANGER]);
    let by_dns = client_ca.leaf(&["pdp-client.acme.internal"], &[]);

    assert_eq!(decides(&server, &server_ca, Some(&gateway)).await, Ok(true));
    assert_eq!(decides(&server, &server_ca, Some(&by_dns)).await, Ok(true));
    for (who, identity) in [("envoy", &envoy), ("stranger", &stranger)] {
        let refused = decides(&server, &server_ca, Some(identity)).await;
        let message = refused.expect_err(who);
        assert!(
            message.starts_with("PermissionDenied: cedarpdp.v1.Authorizer: caller "),
            "{who}: {message}"
        );
    }
    let message = decides(&server, &server_ca, Some(&stranger))
        .await
        .unwrap_err();
    assert!(
        message.contains(STRANGER) && message.contains("batch.acme.internal"),
        "{message}"
    );

    // GetPolicySetInfo belongs to the same API.
    let channel = connect(&server, &server_ca, Some(&stranger)).await.unwrap();
    let info = AuthorizerClient::new(channel.clone())
        .get_policy_set_info(GetPolicySetInfoRequest {})
        .await;
    assert_eq!(info.unwrap_err().code(), tonic::Code::PermissionDenied);

    // ext_authz answers a refused caller with a 403 CheckResponse, never an error a
    // failing-open Envoy would turn into an allow; its own caller gets a real answer.
    let check = CheckRequest::default();
    let refused = AuthorizationClient::new(channel.clone())
        .check(check.clone())
        .await
        .expect("a CheckResponse, not an error")
        .into_inner();
    assert_eq!(
        refused.status.unwrap().code,
        tonic::Code::PermissionDenied as i32
    );
    let metadata = format!("{:?}", refused.dynamic_metadata);
    assert!(metadata.contains("caller_not_allowed"), "{metadata}");
    let envoy_channel = connect(&server, &server_ca, Some(&envoy)).await.unwrap();
    let answered = AuthorizationClient::new(envoy_channel)
        .check(check)
        .await
        .unwrap()
        .into_inner();
    // Past the caller check, an empty check is denied as malformed.
    let metadata = format!("{:?}", answered.dynamic_metadata);
    assert!(
        metadata.contains("\"invalid\"") && !metadata.contains("caller_not_allowed"),
        "{metadata}"
    );

    // Health stays open to any verified caller (probes and load balancers).
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(health.get_ref().status, 1, "SERVING");

    let text = server.metrics_text().await;
    let refused = |api: &str| {
        metric(
            &text,
            &format!(
                "cedar_pdp_requests_rejected_total{{api=\"{api}\",reason=\"caller_not_allowed\"}}"
            ),
        )
    };
    // envoy and stranger twice on IsAuthorized, and GetPolicySetInfo.
    assert_eq!(refused("is_authorized"), Some(4.0), "{text}");
    assert_eq!(refused("ext_authz"), Some(1.0), "{text}");

    // Decisions are audited under the verified caller's identity.
    let records = audit_lines(&audit_path, 3).await;
    let callers: Vec<&str> = records
        .iter()
        .map(|r| r["caller"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        callers,
        [GATEWAY, "pdp-client.acme.internal", ENVOY],
        "{records:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_listed_identity_matches_only_certificate_names_of_its_own_kind() {
    // URI and DNS SANs were once one list: a DNS name written `spiffe://…`, or a URI
    // written as an allowed host name, passed for the caller it spelled.
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = write_files(dir.path(), &server_ca.server(), Some(&client_ca));
    let config = tls_config(files, Some(&[GATEWAY, "pdp-client.acme.internal"]), None);
    let server = TestServer::start_with(config).await;

    let uri_as_dns = client_ca.leaf(&[GATEWAY], &[]);
    let dns_as_uri = client_ca.leaf(&[], &["pdp-client.acme.internal"]);
    for (who, identity) in [
        ("a DNS SAN spelling the SPIFFE id", &uri_as_dns),
        ("a URI SAN spelling the host name", &dns_as_uri),
    ] {
        let message = decides(&server, &server_ca, Some(identity))
            .await
            .expect_err(who);
        // Neither name is of its kind, so the certificate names nobody.
        assert!(
            message.starts_with("PermissionDenied: cedarpdp.v1.Authorizer: the caller presented no certificate identity"),
            "{who}: {message}"
        );
    }
    // The real thing, each of its kind; DNS names ignore case.
    let gateway = client_ca.leaf(&[], &[GATEWAY]);
    let by_dns = client_ca.leaf(&["PDP-Client.acme.internal"], &[]);
    assert_eq!(decides(&server, &server_ca, Some(&gateway)).await, Ok(true));
    assert_eq!(decides(&server, &server_ca, Some(&by_dns)).await, Ok(true));
    server.stop().await;

    // A listed entry must be one kind or the other.
    for bad in [
        "spiffe:",
        "gateway acme",
        "-gateway.acme.internal",
        "*.acme.internal",
    ] {
        let mut config = tls_config(
            write_files(dir.path(), &server_ca.server(), Some(&client_ca)),
            Some(&[bad]),
            None,
        );
        config.policies = example_policies();
        let error = config.check().expect_err(bad).to_string();
        assert!(
            error.contains("tls.authorizer_callers") && error.contains("is not an identity"),
            "{bad}: {error}"
        );
    }
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let files = write_files(dir.path(), &old_ca.server(), None);
    let server = TestServer::start_with(tls_config(files.clone(), None, None)).await;

    let before = connect(&server, &old_ca, None).await.unwrap();
    let mut before = AuthorizerClient::new(before);
    assert!(is_allow(
        before
            .is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));
    assert!(decides(&server, &new_ca, None).await.is_err());

    // A broken rotation (a key that does not go with the certificate) is refused: once
    // the server has read it and counted the failure, the old certificate still serves.
    let (new_cert, new_key) = new_ca.server();
    let (_, wrong_key) = new_ca.server();
    std::fs::write(&files.key, &wrong_key).unwrap();
    std::fs::write(&files.cert, &new_cert).unwrap();
    eventually(
        Duration::from_secs(10),
        "the broken rotation to be refused",
        || async {
            let text = server.metrics_text().await;
            let failures = metric(&text, r#"cedar_pdp_tls_reloads_total{result="failure"}"#);
            (failures >= Some(1.0)).then_some(())
        },
    )
    .await;
    assert_eq!(decides(&server, &old_ca, None).await, Ok(true));

    // Completing it: new connections get the new certificate.
    std::fs::write(&files.key, &new_key).unwrap();
    eventually(Duration::from_secs(10), "the new certificate", || async {
        decides(&server, &new_ca, None).await.ok()
    })
    .await;
    assert!(decides(&server, &old_ca, None).await.is_err());

    // The connection opened before the rotation still works.
    assert!(is_allow(
        before
            .is_authorized(bob_reads_roadmap())
            .await
            .unwrap()
            .get_ref()
    ));
    server.stop().await;
}

#[test]
fn half_a_tls_setup_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--tls-cert", "server.crt"],
            "tls.cert: needs both tls.cert and tls.key",
        ),
        (
            &["--tls-key", "server.key"],
            "tls.key: needs both tls.cert and tls.key",
        ),
        (
            &["--tls-client-ca", "ca.crt"],
            "tls.client_ca: needs both tls.cert and tls.key",
        ),
        (
            &[
                "--tls-cert",
                "s.crt",
                "--tls-key",
                "s.key",
                "--tls-authorizer-callers",
                GATEWAY,
            ],
            "tls.authorizer_callers: needs tls.client_ca",
        ),
    ];
    for (args, expected) in cases {
        let output = cedar_pdp()
            .current_dir(dir.path())
            .args([
                "serve",
                "--policies",
                EXAMPLE_POLICIES,
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = stderr_of(&output);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn unusable_tls_files_stop_the_server_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    let (cert, key) = ca.server();
    let (_, other_key) = ca.server();
    write(dir.path(), "server.crt", &cert);
    write(dir.path(), "server.key", &key);
    write(dir.path(), "other.key", &other_key);
    write(dir.path(), "empty.pem", "");
    let cases: [(&str, &str, &str); 4] = [
        (
            "missing.crt",
            "server.key",
            "tls.cert missing.crt: cannot read",
        ),
        (
            "empty.pem",
            "server.key",
            "tls.cert empty.pem: holds no PEM certificate",
        ),
        (
            "server.crt",
            "empty.pem",
            "tls.key empty.pem: no usable PEM private key",
        ),
        (
            "server.crt",
            "other.key",
            "tls.key other.key: does not go with the certificate",
        ),
    ];
    for (cert, key, expected) in cases {
        let output = cedar_pdp()
            .current_dir(dir.path())
            .args([
                "serve",
                "--policies",
                EXAMPLE_POLICIES,
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{cert} {key}");
        let stderr = stderr_of(&output);
        assert!(stderr.contains(expected), "{cert} {key}: {stderr}");
        assert!(
            !stderr.contains("PRIVATE KEY"),
            "a key's content was printed: {stderr}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_secret_update_rotates_certificate_and_client_ca_together() {
    // A Secret volume is updated as a ConfigMap volume is: a `..data` link swap.
    let dir = tempfile::tempdir().unwrap();
    let (old_server_ca, new_server_ca) = (Ca::new("old server CA"), Ca::new("new server CA"));
    let (old_client_ca, new_client_ca) = (Ca::new("old client CA"), Ca::new("new client CA"));
    let secret = |server: &(String, String), client_ca: &Ca| {
        [
            ("tls.crt", server.0.clone()),
            ("tls.key", server.1.clone()),
            ("ca.crt", client_ca.pem.clone()),
        ]
    };
    let publish = |stamp: &str, files: &[(&str, String); 3]| {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        configmap(dir.path(), stamp, &files);
    };
    publish("2026_01", &secret(&old_server_ca.server(), &old_client_ca));
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
        client_ca: Some(dir.path().join("ca.crt")),
    };
    let server = TestServer::start_with(tls_config(files, None, None)).await;
    let old_client = old_client_ca.leaf(&[], &[GATEWAY]);
    let new_client = new_client_ca.leaf(&[], &[GATEWAY]);
    assert_eq!(
        decides(&server, &old_server_ca, Some(&old_client)).await,
        Ok(true)
    );

    publish("2026_02", &secret(&new_server_ca.server(), &new_client_ca));
    eventually(Duration::from_secs(10), "the new Secret", || async {
        decides(&server, &new_server_ca, Some(&new_client))
            .await
            .ok()
    })
    .await;
    assert!(
        decides(&server, &old_server_ca, Some(&old_client))
            .await
            .is_err()
    );
    assert!(
        decides(&server, &new_server_ca, Some(&old_client))
            .await
            .is_err()
    );
    server.stop().await;
}
