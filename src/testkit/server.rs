//! A loopback HTTP server for the fakes: an axum router on `127.0.0.1:0` that can be taken down
//! (its port refuses connections and open connections are cut) and brought back on the same
//! port, and whose handlers can cut their own connection without answering.
//!
//! Why a listener of our own instead of `axum::serve(TcpListener, ..)`: "the peer is down" and
//! "the connection broke after the request was sent" are different failures for the client
//! (nothing sent vs. maybe paid), so the fakes must produce each one exactly. Aborting the accept
//! loop closes the port; a cancellation token per connection, polled in every read and write,
//! cuts a connection (idle keep-alive ones included) without writing a byte.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The connection a request came on: cancelling it drops the connection without an answer.
/// Handlers get it with `ConnectInfo<Connection>`.
#[derive(Clone, Debug)]
pub struct Connection(CancellationToken);

impl Connection {
    /// Cuts this connection: nothing more is written to it, the socket is closed.
    pub fn cut(&self) {
        self.0.cancel();
    }
}

impl Connected<IncomingStream<'_, CuttableListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, CuttableListener>) -> Self {
        Connection(stream.io().token.clone())
    }
}

/// A TCP listener whose connections all hang off one token.
pub struct CuttableListener {
    inner: TcpListener,
    token: CancellationToken,
}

impl Listener for CuttableListener {
    type Io = CuttableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => return (CuttableStream::new(stream, &self.token), addr),
                // Out of file descriptors and the like: wait and go on, as axum's own does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that fails every read and write once its token is cancelled.
pub struct CuttableStream {
    inner: TcpStream,
    token: CancellationToken,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl CuttableStream {
    fn new(inner: TcpStream, parent: &CancellationToken) -> Self {
        let token = parent.child_token();
        let cut = Box::pin(token.clone().cancelled_owned());
        Self { inner, token, cut }
    }

    /// Ready with an error once cut; registers the waker so an idle connection notices too.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection cut by the fake",
            )
        })
    }
}

impl AsyncRead for CuttableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

struct Running {
    accept: JoinHandle<()>,
    connections: CancellationToken,
}

impl Running {
    fn stop(self) {
        self.accept.abort();
        self.connections.cancel();
    }
}

/// A running fake: serves `router` on its loopback port until dropped.
pub struct Server {
    addr: SocketAddr,
    router: Router,
    running: Mutex<Option<Running>>,
}

impl Server {
    /// Binds `127.0.0.1:0` and serves `router` there.
    pub async fn start(router: Router) -> io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let server = Self {
            addr,
            router,
            running: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, inner: TcpListener) {
        let connections = CancellationToken::new();
        let listener = CuttableListener {
            inner,
            token: connections.clone(),
        };
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<Connection>();
        let accept = tokio::spawn(async move {
            // `serve` only returns on a listener error, which ours never reports.
            let _ = axum::serve(listener, app).await;
        });
        let previous = self.running.lock().expect("server lock").replace(Running {
            accept,
            connections,
        });
        if let Some(previous) = previous {
            previous.stop();
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Takes the server down: the port refuses connections and open ones are cut.
    pub fn down(&self) {
        if let Some(running) = self.running.lock().expect("server lock").take() {
            running.stop();
        }
    }

    /// Brings the server back on the same port.
    pub async fn up(&self) -> io::Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Whether the server accepts connections.
    pub fn is_up(&self) -> bool {
        self.running.lock().expect("server lock").is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.down();
    }
}
