//! TLS on the gRPC port: the server's certificate and key, and optionally the client CA
//! that makes it mutual TLS, read from files and re-read when those files change.
//!
//! [`ServerTls`] holds the current rustls configuration behind an [`ArcSwap`]; every new
//! connection takes whatever is current, connections already open keep theirs, so a
//! rotation (cert-manager renewing a Secret, a job rewriting the files) drops no call.
//! A rotation that cannot be loaded — a key that does not match the certificate, a file
//! half written — is refused and logged, and the last good configuration keeps serving.
//! [`CertWatcher`] follows the files' folders (a Kubernetes Secret volume swaps a `..data`
//! symlink, so it is the folder that changes) and reloads after a short quiet period.
//! The accept loop that hands each new connection the current configuration is
//! `api::incoming`.
//!
//! Only TLS 1.2 and 1.3 are spoken, with rustls's `ring` cipher suites, and only HTTP/2
//! (ALPN `h2`), as gRPC needs. The files' contents are never logged.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher as _};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::telemetry::{Metrics, metrics::TlsReload};

pub use crate::config::TlsFiles;

/// A TLS configuration that cannot be used, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        /// The setting naming the file (`tls.cert`, `tls.key`, `tls.client_ca`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{key} {}: {message}", path.display())]
    Invalid {
        /// The setting naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        message: String,
    },
}

/// The served TLS configuration, swapped whole when the files change.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// The same, offering HTTP/1.1 besides HTTP/2 (the AuthZEN port).
    current_http: ArcSwap<ServerConfig>,
    /// Hash of the three files' contents as last loaded, to tell a real change from a
    /// touch.
    loaded: Mutex<[u8; 32]>,
}

impl ServerTls {
    /// Reads and checks the files; any problem is an error naming the file.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let (config, hash) = build(&files)?;
        Ok(Self {
            files,
            current_http: ArcSwap::from_pointee(offering_http1(&config)),
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(hash),
        })
    }

    /// Whether client certificates are asked for and verified (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The files this configuration is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and serves them if they changed: `Ok(true)` if new
    /// connections now get the new configuration, `Ok(false)` if nothing changed, and an
    /// error (the old configuration still serving) if the new files cannot be used.
    pub fn reload(&self) -> Result<bool, TlsError> {
        // Held across the build, so that two reloads cannot store out of order.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let (config, hash) = build(&self.files)?;
        if *loaded == hash {
            return Ok(false);
        }
        self.current_http.store(Arc::new(offering_http1(&config)));
        self.current.store(Arc::new(config));
        *loaded = hash;
        Ok(true)
    }

    /// An acceptor with the current configuration, for one new connection, offering the
    /// protocols of `alpn`.
    pub(crate) fn acceptor(&self, alpn: Alpn) -> TlsAcceptor {
        match alpn {
            Alpn::H2 => TlsAcceptor::from(self.current.load_full()),
            Alpn::Http => TlsAcceptor::from(self.current_http.load_full()),
        }
    }
}

/// The application protocols a TLS port offers in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 only (gRPC).
    H2,
    /// HTTP/2 and HTTP/1.1 (the AuthZEN port).
    Http,
}

/// `config` offering HTTP/1.1 besides HTTP/2.
fn offering_http1(config: &ServerConfig) -> ServerConfig {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Reads `path` (for the setting `key`).
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file; at least one.
fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |message: String| TlsError::Invalid {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}

/// A rustls configuration from `files`, and the hash of what it was built from.
fn build(files: &TlsFiles) -> Result<(ServerConfig, [u8; 32]), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = read("tls.cert", &files.cert)?;
    let key_pem = read("tls.key", &files.key)?;
    let ca_pem = match &files.client_ca {
        Some(path) => Some((path, read("tls.client_ca", path)?)),
        None => None,
    };
    let mut hash = Sha256::new();
    for part in [
        Some(&cert_pem),
        Some(&key_pem),
        ca_pem.as_ref().map(|(_, pem)| pem),
    ] {
        let part = part.map_or(&[][..], Vec::as_slice);
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }

    let chain = certificates("tls.cert", &files.cert, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Invalid {
        key: "tls.key",
        path: files.key.clone(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid {
            key: "tls.cert",
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    let builder = match &ca_pem {
        None => builder.with_no_client_auth(),
        Some((path, pem)) => {
            let invalid = |message: String| TlsError::Invalid {
                key: "tls.client_ca",
                path: (*path).clone(),
                message,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates("tls.client_ca", path, pem)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            key: "tls.key",
            path: files.key.clone(),
            message: format!("does not go with the certificate of tls.cert: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, hash.finalize().into()))
}

/// Reloads a [`ServerTls`] when its files change, until dropped.
#[derive(Debug)]
pub struct CertWatcher {
    // Dropping the watcher drops the only sender, which ends the reloading thread.
    _watcher: notify::RecommendedWatcher,
    seen: Arc<Seen>,
}

/// What the watch has been told, for seeing that it judged events right.
#[derive(Debug, Default)]
struct Seen {
    /// File-system events that may mean a change, each of which leads to a reload.
    changes: AtomicU64,
    /// The paths of the latest of those.
    last_change: Mutex<Vec<PathBuf>>,
}

/// How long the certificate folders must be quiet before a reload: a rotation writes
/// the certificate and the key one after the other.
const QUIET: Duration = Duration::from_millis(200);

/// The longest a stream of changes can put a reload off.
const MAX_WAIT: Duration = Duration::from_secs(2);

/// How often the files are read again with no event at all: a safety net for changes
/// the watch cannot see (a watched folder replaced by another, a network file system).
const RECHECK: Duration = Duration::from_secs(60);

/// Whether `event` may mean the files changed. Reading them (the reload's own reads
/// included) must not count, or every reload would cause the next.
fn may_change(event: &notify::Result<notify::Event>) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event {
        Ok(event) => match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        },
        // An error of the watcher itself: look again rather than miss a change.
        Err(_) => true,
    }
}

/// Reloads `tls`, counts the outcome in `metrics` and logs it; a failure is logged once
/// until it changes (the files stay broken across rechecks), and its message is returned
/// for that comparison.
fn reload_and_log(
    tls: &ServerTls,
    metrics: &Metrics,
    last_error: Option<String>,
) -> Option<String> {
    match tls.reload() {
        Ok(changed) => {
            if changed {
                metrics.tls_reloaded(TlsReload::Changed);
                tracing::info!("TLS files changed: new connections use the new certificate");
            } else {
                metrics.tls_reloaded(TlsReload::Unchanged);
                if last_error.is_some() {
                    tracing::info!("TLS files usable again; the serving certificate is unchanged");
                }
            }
            None
        }
        Err(err) => {
            metrics.tls_reloaded(TlsReload::Failure);
            let message = err.to_string();
            if last_error.as_deref() != Some(message.as_str()) {
                tracing::error!(
                    error = %message,
                    "TLS files changed but cannot be used; the previous ones keep serving"
                );
            }
            Some(message)
        }
    }
}

impl CertWatcher {
    /// Watches the folders of `tls`'s files, counting each re-read in `metrics`.
    pub fn start(tls: Arc<ServerTls>, metrics: Metrics) -> Result<Self, notify::Error> {
        let (events, receiver) = mpsc::channel::<()>();
        let seen = Arc::new(Seen::default());
        let counted = seen.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if may_change(&event) {
                    if let Ok(event) = &event {
                        *counted
                            .last_change
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = event.paths.clone();
                    }
                    counted.changes.fetch_add(1, Ordering::Relaxed);
                    let _ = events.send(());
                }
            })?;
        let files = tls.files();
        let mut folders: Vec<&Path> = [
            Some(&files.cert),
            Some(&files.key),
            files.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
        folders.sort();
        folders.dedup();
        for folder in folders {
            watcher.watch(folder, RecursiveMode::NonRecursive)?;
        }
        thread::Builder::new()
            .name("tls-watch".to_owned())
            .spawn(move || {
                // A change between the start-up load and the watch is caught here.
                let mut last_error = reload_and_log(&tls, &metrics, None);
                loop {
                    match receiver.recv_timeout(RECHECK) {
                        Ok(()) => {
                            let first = Instant::now();
                            while first.elapsed() < MAX_WAIT && receiver.recv_timeout(QUIET).is_ok()
                            {
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    last_error = reload_and_log(&tls, &metrics, last_error);
                }
            })
            .map_err(notify::Error::io)?;
        Ok(Self {
            _watcher: watcher,
            seen,
        })
    }

    /// File-system events taken as a possible change so far (each leads to a reload).
    pub fn changes_seen(&self) -> u64 {
        self.seen.changes.load(Ordering::Relaxed)
    }

    /// The paths of the latest event taken as a possible change.
    pub fn last_change(&self) -> Vec<PathBuf> {
        self.seen
            .last_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{CertWatcher, ServerTls, TlsFiles};
    use crate::telemetry::Metrics;

    fn write_pair(dir: &std::path::Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    /// The value of `cedar_pdp_tls_reloads_total{result}`.
    fn reloads(metrics: &Metrics, result: &str) -> f64 {
        let series = format!("cedar_pdp_tls_reloads_total{{result=\"{result}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str())?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Polls `done` until it holds, for at most 10 s.
    fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn reading_the_files_is_not_a_change_but_writing_them_is() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path());
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: None,
        };
        let tls = std::sync::Arc::new(ServerTls::load(files.clone()).unwrap());
        let metrics = Metrics::new();
        let watcher = CertWatcher::start(tls.clone(), metrics.clone()).unwrap();
        until("the start-up check", || {
            reloads(&metrics, "unchanged") == 1.0
        });
        // Others reading the files (and the reload's own reads, which are no different)
        // start no reload. Events arrive in order, so once the creation of a folder after
        // the reads (one event) has been taken for a change, every read has been judged:
        // none was.
        let changes = watcher.changes_seen();
        for _ in 0..5 {
            std::fs::read(&files.cert).unwrap();
            std::fs::read(&files.key).unwrap();
        }
        let fence = dir.path().join("fence");
        std::fs::create_dir(&fence).unwrap();
        until("the fence's event", || {
            watcher.last_change().contains(&fence)
        });
        assert_eq!(
            watcher.changes_seen(),
            changes + 1,
            "reads were taken for changes"
        );

        write_pair(dir.path());
        until("the rotation", || reloads(&metrics, "changed") == 1.0);
        assert!(watcher.changes_seen() > changes);
        assert_eq!(reloads(&metrics, "failure"), 0.0);
    }
}
