//! End-to-end checks against Prometheus's own tools: `promtool check metrics` lints the
//! `/metrics` output, and a real Prometheus server scrapes a running server and gives
//! back the decision counts sent to it.
//!
//! They need `promtool` and `prometheus` (Debian's `prometheus` package), so they are
//! `#[ignore]`d in the plain `cargo test`; `.ci/run` installs the package and runs them
//! with `cargo test --test e2e_prometheus -- --ignored`.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use cedar_pdp::proto::cedarpdp::v1 as pb;
use common::*;

fn doc() -> pb::EntityUid {
    p("Document", "acme-roadmap-q3")
}

/// Sends `allows` allowed and `denies` denied IsAuthorized calls.
async fn decide(server: &TestServer, allows: usize, denies: usize) {
    let mut client = server.client().await;
    for _ in 0..allows {
        let r = request(p("User", "bob"), action("read"), doc());
        assert!(is_allow(
            &client.is_authorized(r).await.unwrap().into_inner()
        ));
    }
    for _ in 0..denies {
        let r = request(p("User", "carol"), action("write"), doc());
        assert!(!is_allow(
            &client.is_authorized(r).await.unwrap().into_inner()
        ));
    }
}

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed (apt-get install prometheus); .ci/run installs it"
    );
    Command::new(name)
}

#[tokio::test]
#[ignore = "needs promtool; run by .ci/run"]
async fn the_metrics_output_passes_promtool_check_metrics() {
    let server = TestServer::start(&example_policies()).await;
    decide(&server, 2, 1).await;
    let text = server.metrics_text().await;
    server.stop().await;

    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{said}\n--- metrics:\n{text}"
    );
    assert!(said.trim().is_empty(), "promtool has remarks:\n{said}");
}

/// Kills and reaps Prometheus however the test ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs prometheus; run by .ci/run"]
async fn a_real_prometheus_scrapes_the_decision_counts() {
    let server = TestServer::start(&example_policies()).await;
    decide(&server, 7, 4).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cedar-pdp\n    static_configs:\n      - targets: [\"{}\"]\n",
            server.metrics_addr
        ),
    )
    .unwrap();
    // Port 0: Prometheus logs the address it got as `msg="Listening on" address=…`.
    let mut child = tool("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let prometheus = Reap(child);
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("msg=\"Listening on\"")
                && let Some(addr) = line.split("address=").nth(1)
            {
                let _ = found.send(addr.trim().to_owned());
            }
        }
    });
    let address: std::net::SocketAddr = address
        .recv_timeout(Duration::from_secs(60))
        .expect("prometheus says where it listens")
        .parse()
        .unwrap();

    let query = |q: &str| format!("/api/v1/query?query={}", encode(q));
    let value = |body: &str| -> Option<f64> {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let allows = query(r#"sum(cedar_pdp_decisions_total{decision="allow"})"#);
    let denies = query(r#"sum(cedar_pdp_decisions_total{decision="deny"})"#);
    let seen = eventually(
        Duration::from_secs(60),
        "prometheus to scrape the counts",
        || {
            let (allows, denies) = (allows.clone(), denies.clone());
            async move {
                let allowed = value(&http_get(address, &allows).await.1)?;
                let denied = value(&http_get(address, &denies).await.1)?;
                Some((allowed, denied))
            }
        },
    )
    .await;
    assert_eq!(seen, (7.0, 4.0));
    let up = value(&http_get(address, &query("up{job=\"cedar-pdp\"}")).await.1);
    assert_eq!(up, Some(1.0), "the target is up");
    drop(prometheus);
    server.stop().await;
}
