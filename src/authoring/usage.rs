//! `cedar-pdp usage`: asks a running server (`GetPolicyUsage`) how many decisions each
//! of its policies has determined since its policy set was loaded, and lists them, or
//! only the ones that determined none, for least-privilege reviews.
//!
//! A client of the server's own gRPC API, page by page, over plaintext or TLS (with a
//! client certificate when the server asks for one).

use std::{path::PathBuf, time::Duration};

use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient};

/// Where the server is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub server: String,
    /// PEM CA certificates to trust for an `https://` server (else the system's roots
    /// are not used: give the CA that signed the server's certificate).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain and key, for a server that requires mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What the server said: its policy set and every policy listed.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The serving version the counts belong to.
    pub policy_version: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// Policies in the set.
    pub policy_count: u64,
    /// The policies listed (only the unused ones, when asked for those).
    pub policies: Vec<pb::PolicyUse>,
}

/// Fetches every page of `GetPolicyUsage` from `target` (only unused policies when
/// `unused_only`). The pages are read from one policy set: if the server reloads between
/// two pages, the listing starts again (at most three times), so it never mixes two sets.
pub async fn fetch(target: &Target, unused_only: bool) -> Result<Usage, String> {
    let mut client = AuthorizerClient::new(connect(target).await?);
    let mut attempts = 0;
    'again: loop {
        attempts += 1;
        let mut usage: Option<Usage> = None;
        let mut page_token = String::new();
        loop {
            let page = client
                .get_policy_usage(pb::GetPolicyUsageRequest {
                    unused_only,
                    page_token: page_token.clone(),
                    page_size: 0,
                })
                .await
                .map_err(|status| {
                    format!(
                        "{}: GetPolicyUsage failed: {}: {}",
                        target.server,
                        status.code(),
                        status.message()
                    )
                })?
                .into_inner();
            match &mut usage {
                Some(usage) if usage.policy_version != page.policy_version => {
                    if attempts >= 3 {
                        return Err(format!(
                            "{}: the policy set changed while it was being listed, three times",
                            target.server
                        ));
                    }
                    continue 'again;
                }
                Some(usage) => usage.policies.extend(page.policies),
                None => {
                    usage = Some(Usage {
                        policy_version: page.policy_version,
                        loaded_at: page
                            .loaded_at
                            .and_then(|t| std::time::SystemTime::try_from(t).ok())
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                            .unwrap_or_default(),
                        policy_count: page.policy_count,
                        policies: page.policies,
                    });
                }
            }
            if page.next_page_token.is_empty() {
                break 'again usage.ok_or_else(|| "no page was read".to_owned());
            }
            // Ids come in order: a token that does not move forward would loop forever.
            if page.next_page_token <= page_token {
                return Err(format!(
                    "{}: GetPolicyUsage returned a page token that does not move forward",
                    target.server
                ));
            }
            page_token = page.next_page_token;
        }
    }
}

/// A channel to `target`, with TLS for an `https://` address.
async fn connect(target: &Target) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(target.server.clone())
        .map_err(|e| format!("--server {}: {e}", target.server))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if target.server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &target.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &target.identity {
            let cert = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            let key = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("--server {}: {e}", target.server))?;
    } else if target.ca.is_some() || target.identity.is_some() {
        return Err(format!(
            "--server {}: TLS files were given for an address that is not https://",
            target.server
        ));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.server))
}

/// `text` with control characters escaped, so that an id written by a policy author (or
/// sent by a server) cannot drive the terminal it is printed on.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string().into()
    } else {
        text.into()
    }
}

impl Usage {
    /// A table for a person: one line per policy, then how many never decided.
    pub fn text(&self, unused_only: bool) -> String {
        let mut out = format!(
            "policy version {} (loaded {}), {} policies\n",
            self.policy_version, self.loaded_at, self.policy_count
        );
        let width = self
            .policies
            .iter()
            .map(|p| p.policy_id.len())
            .max()
            .unwrap_or(0);
        for p in &self.policies {
            let place = if p.file.is_empty() {
                String::new()
            } else {
                format!("{}:{}", printable(&p.file), p.line)
            };
            out.push_str(&format!(
                "  {:<6} {:<width$}  allow {:>8}  deny {:>8}  {place}\n",
                printable(&p.effect),
                printable(&p.policy_id),
                p.allow_decisions,
                p.deny_decisions
            ));
        }
        let unused = self
            .policies
            .iter()
            .filter(|p| p.allow_decisions == 0 && p.deny_decisions == 0)
            .count();
        if unused_only {
            out.push_str(&format!(
                "{unused} of {} policies determined no decision since the set was loaded\n",
                self.policy_count
            ));
        } else {
            out.push_str(&format!(
                "{} policies listed, {unused} determined no decision since the set was loaded\n",
                self.policies.len()
            ));
        }
        out
    }

    /// The same as one JSON document, for scripts.
    pub fn json(&self) -> String {
        let policies: Vec<_> = self
            .policies
            .iter()
            .map(|p| {
                json!({
                    "policy_id": p.policy_id,
                    "effect": p.effect,
                    "allow_decisions": p.allow_decisions,
                    "deny_decisions": p.deny_decisions,
                    "file": p.file,
                    "line": p.line,
                })
            })
            .collect();
        let doc = json!({
            "policy_version": self.policy_version,
            "loaded_at": self.loaded_at,
            "policy_count": self.policy_count,
            "policies": policies,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}
