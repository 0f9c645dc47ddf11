//! TCP plumbing shared by Weir's listeners (the native protocol in `weir-server`, the
//! Kafka protocol in `weir-kafka`): what every connection needs regardless of what it
//! speaks.
//!
//! - [`accept_loop`] accepts until shutdown, with at most `connections_max` served at
//!   once; the listener decides how to refuse the rest.
//! - [`read_more`] reads the next bytes of a connection unless shutdown comes first.
//! - [`ByteBudget`] caps the bytes one connection holds in requests being served and
//!   answers not yet written, so a client that sends without reading stops being read
//!   instead of growing the server's memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes read from a socket at a time when no frame announces more.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Pause after a failed accept (out of file descriptors and the like), instead of spinning.
const ACCEPT_RETRY_MS: u64 = 50;

/// Accepts connections until `stop` is cancelled. At most `connections_max` are served at
/// once, each by `serve` on `connections`; beyond that each new one goes to `refuse`
/// (also on `connections`), which may tell the peer why before it is closed.
pub async fn accept_loop<S, SF, R, RF>(
    listener: TcpListener,
    stop: CancellationToken,
    connections_max: u32,
    connections: TaskTracker,
    serve: S,
    refuse: R,
) where
    S: Fn(TcpStream, SocketAddr) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, SocketAddr) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(connections_max as usize));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let served = serve(socket, peer);
                connections.spawn(async move {
                    tracing::debug!(%peer, "connection opened");
                    served.await;
                    tracing::debug!(%peer, "connection closed");
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, max = connections_max, "refusing connection: too many");
                connections.spawn(refuse(socket, peer));
            }
        }
    }
}

/// Reads whatever arrives next into `buf` (making room for a chunk first). False when the
/// connection is done reading: the peer closed it, the socket failed (logged), or `stop`
/// was cancelled first.
pub async fn read_more(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    stop: &CancellationToken,
    peer: SocketAddr,
) -> bool {
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    tokio::select! {
        r = rd.read_buf(buf) => match r {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "read failed");
                false
            }
        },
        () = stop.cancelled() => false,
    }
}

/// The bytes one connection may hold at once in requests being served and answers not yet
/// written. The reader reserves each request's share before serving it and waits while
/// the budget is spent, which leaves the rest in the socket: the peer is back-pressured by
/// TCP, and the server's memory per connection stays bounded.
///
/// Reservations are taken by the reader alone, in arrival order, and are released by
/// progress that needs no new reservation (a request finishing, an answer going out), so
/// waiting for one cannot deadlock. A reservation above the whole budget is cut to the
/// budget: such a request waits until the connection holds nothing else, then runs alone.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    total_bytes: u32,
}

/// A share of a [`ByteBudget`], returned to it when dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A budget of `total_bytes` (at least 1).
    pub fn new(total_bytes: u32) -> Self {
        let total_bytes = total_bytes.max(1);
        Self {
            permits: Arc::new(Semaphore::new(total_bytes as usize)),
            total_bytes,
        }
    }

    /// Waits until `bytes` (at most the whole budget, at least 1) are free and takes them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_bytes);
        let permit = match self.permits.clone().acquire_many_owned(n).await {
            Ok(p) => p,
            // The semaphore is private and never closed.
            Err(_) => unreachable!("a ByteBudget's semaphore is never closed"),
        };
        Reservation { _permit: permit }
    }

    /// Bytes not reserved right now.
    pub fn available_bytes(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_bytes_and_are_capped_at_the_budget() {
        let budget = ByteBudget::new(100);
        let a = budget.reserve(60).await;
        assert_eq!(budget.available_bytes(), 40);
        // 50 more do not fit: the reservation waits until `a` is returned.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(a);
        let b = waiting.await.expect("reserved");
        assert_eq!(budget.available_bytes(), 50);
        drop(b);
        // Above the whole budget: takes all of it, once nothing else is held.
        let all = budget.reserve(10_000_000_000).await;
        assert_eq!(budget.available_bytes(), 0);
        drop(all);
        // Zero bytes still take one, so every request is counted.
        let _one = budget.reserve(0).await;
        assert_eq!(budget.available_bytes(), 99);
    }
}
