//! Who may call which API: with mutual TLS on, the verified client certificate names the
//! caller (its SPIFFE URI SANs and DNS SANs), and each API may keep an allow-list of
//! those identities. A caller off the list is refused before its request is looked at
//! (tonic has decoded the message by then, within `max_message_bytes`).
//!
//! The identity is also what the audit log records as `caller`. Without mutual TLS there
//! is no verified identity and every caller is admitted, as the config allows no list
//! then (`Config::check`).

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tonic::Request;
use x509_parser::{extensions::GeneralName, prelude::FromDer as _};

use crate::{
    config::{IdentityKind, same_caller},
    decide::Admission,
};

/// The callers one API admits.
#[derive(Debug, Clone, Default)]
pub struct CallerPolicy {
    /// Identities allowed; `None` admits every caller that passed the handshake.
    allowed: Option<Arc<[String]>>,
}

impl CallerPolicy {
    /// Admits exactly `allowed` (when `Some`), or every verified caller.
    pub fn new(allowed: Option<Vec<String>>) -> Self {
        Self {
            allowed: allowed.map(Into::into),
        }
    }

    /// Admits the caller with its identity for the audit log (`None` without a client
    /// certificate), or not, when an allow-list is set and holds none of its identities.
    pub(crate) fn admit<T>(&self, request: &Request<T>) -> Admission {
        self.admit_certificate(request.peer_certs().as_deref().and_then(|c| c.first()))
    }

    /// [`CallerPolicy::admit`] for a caller that presented `certificate` (the first of its
    /// verified chain), or none.
    pub(crate) fn admit_certificate(&self, certificate: Option<&CertificateDer<'_>>) -> Admission {
        let identities = certificate.map(identities).unwrap_or_default();
        let Some(allowed) = &self.allowed else {
            return Admission::Admitted(identities.into_iter().next());
        };
        match identities
            .iter()
            .find(|id| allowed.iter().any(|listed| same_caller(listed, id)))
        {
            Some(id) => Admission::Admitted(Some(id.clone())),
            None => Admission::NotAllowed(identities),
        }
    }
}

/// The identities a certificate names: its URI SANs (SPIFFE ids) first, then its DNS
/// SANs, each as written. A URI SAN without a scheme, or a DNS SAN that is not a host name
/// (`spiffe://…` written as a DNS name), names nobody: an identity's kind is then plain from
/// its text, and an allow-list entry matches only names of its own kind. A certificate
/// that cannot be parsed names none (it was already verified by the handshake, so this
/// does not happen in practice).
pub(crate) fn identities(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    let names = &san.value.general_names;
    let uris = names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) if IdentityKind::of(uri) == Some(IdentityKind::Uri) => {
            Some((*uri).to_owned())
        }
        _ => None,
    });
    let dns = names.iter().filter_map(|name| match name {
        GeneralName::DNSName(dns) if IdentityKind::of(dns) == Some(IdentityKind::Dns) => {
            Some((*dns).to_owned())
        }
        _ => None,
    });
    uris.chain(dns).collect()
}
