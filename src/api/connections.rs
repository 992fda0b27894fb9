//! Serving the gRPC port's connections: HTTP/2 through hyper, each call through
//! [`Admission`](super::admission::Admission), and a graceful end.
//!
//! tonic's own server runs its whole service stack inside the task hyper spawns per call,
//! after that task has waited for a worker, so no limit it applies can see the calls still
//! queued. This loop hands hyper a service that admits each call on the connection's task
//! instead; the HTTP/2 settings are the ones tonic's server used here before (keepalive,
//! concurrent streams), and everything else is hyper's defaults, as it was.
//!
//! On the shutdown signal the loop stops accepting (dropping the listener, so new clients
//! are refused rather than left hanging), sends every connection a GOAWAY, and returns
//! once all of them have finished their calls in flight and closed.

use std::{future::Future, pin::pin, time::Duration};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;

use super::admission::Admission;

/// How often an idle connection is pinged, and how long the answer may take: a peer that
/// vanished without closing (a node gone, a NAT entry dropped) is found out and its
/// connection slot freed.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

/// Serves every connection `incoming` yields until `signal` resolves, then lets them
/// finish their calls and returns when the last has closed.
pub(crate) async fn serve<I, IO, IE>(
    incoming: I,
    admission: Admission,
    max_concurrent_streams: usize,
    signal: impl Future<Output = ()>,
) where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: std::fmt::Display,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE.0)
        .keep_alive_timeout(KEEPALIVE.1)
        .max_concurrent_streams(u32::try_from(max_concurrent_streams).unwrap_or(u32::MAX));
    // Each connection holds a receiver until it has closed; `closed` below waits for all.
    let (stop, stopping) = watch::channel(());
    {
        let mut incoming = pin!(incoming);
        let mut signal = pin!(signal);
        loop {
            let io = tokio::select! {
                () = &mut signal => break,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "accepting a connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let service = admission.connection(io.connect_info());
            let connection = builder.serve_connection(TokioIo::new(io), service);
            let mut stopping = stopping.clone();
            tokio::spawn(async move {
                let mut connection = pin!(connection);
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        }
                        return;
                    }
                    _ = stopping.changed() => connection.as_mut().graceful_shutdown(),
                }
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error while closing");
                }
            });
        }
    }
    drop(stopping);
    let _ = stop.send(());
    stop.closed().await;
}
