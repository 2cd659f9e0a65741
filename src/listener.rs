//! How the lab listens: a socket built by hand, because std's `TcpListener::bind` cannot set
//! the options that matter before `listen` (both the HTTP server and the WebSocket lesson
//! use it).

use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// Socket timeouts set on a listener, which Linux copies to every socket it accepts.
#[derive(Clone, Copy, Default)]
pub struct Timeouts {
    pub read: Option<std::time::Duration>,
    pub write: Option<std::time::Duration>,
}

/// A listener as tiny_http would make it, but with TCP_NODELAY (accepted sockets inherit it,
/// so one-event frames leave at once), a backlog of 4096 instead of std's 128, and read and
/// write timeouts (inherited too: tiny_http's own reads and every write of ours time out, with
/// no code in tiny_http or in the lessons).
pub fn bind(addr: SocketAddr, timeouts: Timeouts) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(timeouts.read)?;
    socket.set_write_timeout(timeouts.write)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
