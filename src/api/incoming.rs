//! Accepting connections for the gRPC port, plaintext or TLS, with a cap on how many are
//! open at once. Together with HTTP/2's limit on concurrent streams per connection this
//! bounds the calls the server can have queued: past the cap a new connection is closed
//! at once (the client sees UNAVAILABLE and can go to another replica) instead of adding
//! to a queue that only grows.
//!
//! Every accepted socket gets `TCP_NODELAY`: Nagle's algorithm would hold a small
//! response back until the caller's delayed ACK, tens of milliseconds on a decision that
//! takes microseconds. TLS handshakes run concurrently, each at most
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the next one.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::tls::{Alpn, ServerTls};
use crate::telemetry::OncePerSecond;

/// How long a client has to finish its TLS handshake (or, in plaintext, to send its first
/// byte) before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection holding one of the open-connection slots until it is dropped.
#[derive(Debug)]
pub struct Counted {
    stream: TcpStream,
    open: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Plaintext connections from `listener`, at most `max_connections` open at once. A
/// client must start talking within [`HANDSHAKE_TIMEOUT`], as a TLS client must finish
/// its handshake, or its connection is closed: a silent socket would hold a slot forever.
pub fn plaintext(
    listener: TcpListener,
    max_connections: usize,
) -> ReceiverStream<io::Result<Counted>> {
    accept(
        listener,
        max_connections,
        |connection, peer, ready| async move {
            let mut first = [0u8; 1];
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.stream.peek(&mut first)).await
            {
                Ok(Ok(n)) if n > 0 => {
                    let _ = ready.send(Ok(connection)).await;
                }
                Ok(_) => {}
                Err(_) => tracing::debug!(%peer, "closed a connection that sent nothing"),
            }
        },
    )
}

/// Connections from `listener` whose TLS handshake finished, each with the configuration
/// current when it was accepted, at most `max_connections` open (handshaking or not).
/// Failed handshakes are logged at debug level and dropped: a port scan or a plaintext
/// client is not the server's problem.
pub fn tls(
    listener: TcpListener,
    max_connections: usize,
    tls: Arc<ServerTls>,
    alpn: Alpn,
) -> ReceiverStream<io::Result<TlsStream<Counted>>> {
    accept(listener, max_connections, move |connection, peer, ready| {
        let acceptor = tls.acceptor(alpn);
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send(Ok(stream)).await;
                }
                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    })
}

/// The accept loop: caps open connections, sets `TCP_NODELAY`, and hands each connection
/// to `admit` on a task of its own, which sends what should be served on the channel.
/// Ends when the returned stream is dropped.
fn accept<T, F, Fut>(
    listener: TcpListener,
    max_connections: usize,
    admit: F,
) -> ReceiverStream<io::Result<T>>
where
    T: Send + 'static,
    F: Fn(Counted, SocketAddr, mpsc::Sender<io::Result<T>>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (ready, stream) = mpsc::channel(64);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let warnings = OncePerSecond::new();
        let warn = |message: &str, error: Option<&io::Error>| {
            if warnings.ready() {
                match error {
                    Some(error) => tracing::warn!(%error, max_connections, "{message}"),
                    None => tracing::warn!(max_connections, "{message}"),
                }
            }
        };
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: back off rather than spin.
                    warn("accepting a connection failed", Some(&err));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if open.fetch_add(1, Ordering::Relaxed) >= max_connections {
                open.fetch_sub(1, Ordering::Relaxed);
                warn("connection refused: max_connections are open", None);
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            let connection = Counted {
                stream,
                open: open.clone(),
            };
            tokio::spawn(admit(connection, peer, ready.clone()));
        }
    });
    ReceiverStream::new(stream)
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};
    use tokio_stream::StreamExt as _;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        // Without TCP_NODELAY a response written in two segments waits for the client's
        // delayed ACK: tens of milliseconds on a decision of microseconds.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = super::plaintext(listener, 4);
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"P").await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.stream.nodelay().unwrap());
    }
}
