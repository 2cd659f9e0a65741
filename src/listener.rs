//! How the lab listens: a socket built by hand, because std's `TcpListener::bind` cannot set
//! the options that matter before `listen`.

use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

/// A listener with TCP_NODELAY (accepted sockets inherit it on Linux, and
/// `connection::accept_loop` sets it again for the systems where they do not, so one-event
/// frames leave at once) and a backlog of 4096 instead of std's 128 (thousands of clients
/// connecting at once would otherwise wait for SYN retries).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
