//! A loopback TCP proxy that can be cut: what a network partition between the controller and the
//! API server looks like to the controller (connections reset, new ones refused). Started slow,
//! it holds back each chunk of the upstream's answers: a distant or loaded RPC node.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to `upstream` while up.
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    down: bool,
    connections: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        Self::start_slow(upstream, Duration::ZERO).await
    }

    /// Starts forwarding to `upstream`, each chunk of its answers `delay` late.
    pub async fn start_slow(upstream: String, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.down {
                    // Dropping the accepted socket closes it at once: the client sees a reset.
                    continue;
                }
                let upstream = upstream.clone();
                state.connections.push(tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&upstream).await {
                        forward(inbound, outbound, delay).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            state,
            accept,
        }
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.down = true;
        for c in state.connections.drain(..) {
            c.abort();
        }
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.state.lock().unwrap().down = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies both ways; what comes back from upstream waits `delay` per chunk.
async fn forward(mut inbound: TcpStream, mut outbound: TcpStream, delay: Duration) {
    if delay.is_zero() {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    }
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_upstream, mut to_upstream) = outbound.into_split();
    let up = tokio::io::copy(&mut from_client, &mut to_upstream);
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from_upstream.read(&mut buf).await {
            tokio::time::sleep(delay).await;
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        () = down => {}
    }
}
