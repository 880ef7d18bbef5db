//! The threads that serve an inbound or outbound address: `--workers` of them, each a
//! single-threaded runtime accepting on its own `SO_REUSEPORT` socket bound to
//! that address, as nginx's workers do. The kernel spreads new connections
//! across the sockets; a connection, its requests, its app connection and
//! every wake-up between them then stay on one thread, with no hand-off
//! between threads per request.

use std::future::Future;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Pending connections per socket.
const BACKLOG: i32 = 1024;

/// `count` sockets listening on `addr` (the first one's port when `addr`'s is
/// 0), made now so that a bad address fails the start, naming it.
pub(crate) fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(BACKLOG)?;
        let listener = std::net::TcpListener::from(socket);
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Runs `serve` for each listener on a thread of its own, with its own
/// single-threaded runtime; each receiver completes when its thread ends
/// (returned, panicked, or its runtime could not start).
pub(crate) fn spawn<F, Fut>(
    name: &str,
    listeners: Vec<std::net::TcpListener>,
    serve: F,
) -> std::io::Result<Vec<oneshot::Receiver<()>>>
where
    F: Fn(TcpListener) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()>,
{
    let mut ended = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (done, end) = oneshot::channel::<()>();
        let serve = serve.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done;
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "could not start a listener's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener).await,
                        Err(e) => tracing::error!(error = %e, "could not register a listener"),
                    }
                });
            })?;
        ended.push(end);
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn every_socket_listens_on_the_port_the_first_was_given() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = listeners[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(listeners.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Another process's socket without SO_REUSEPORT cannot take the port.
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn connections_are_served_by_the_threads_and_their_end_is_reported() {
        use std::io::Read as _;
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let ended = spawn("test", listeners, |listener: TcpListener| async move {
            // Answer one connection with the thread's name, then end.
            let (mut tcp, _) = listener.accept().await.unwrap();
            let name = std::thread::current().name().unwrap().to_owned();
            tokio::io::AsyncWriteExt::write_all(&mut tcp, name.as_bytes())
                .await
                .unwrap();
        })
        .unwrap();
        // The kernel picks the socket: connect until each thread has answered
        // (a connection that lands on a socket whose thread has ended is reset).
        let mut names = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while names.len() < 2 {
            assert!(std::time::Instant::now() < deadline, "only {names:?} answered");
            let Ok(mut tcp) = std::net::TcpStream::connect(addr) else {
                continue;
            };
            let mut name = String::new();
            if tcp.read_to_string(&mut name).is_ok() && !name.is_empty() {
                names.insert(name);
            }
        }
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["test-0", "test-1"]);
        for end in ended {
            assert!(end.blocking_recv().is_err(), "a thread's end is reported");
        }
    }
}
