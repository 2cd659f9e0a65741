//! Serves the Socket.IO lesson alone: `cargo run --example socket_io`, then open the URL it
//! logs in two tabs. Polling is on the HTTP port; the websocket transport on the WebSocket
//! port (the HTTP port + 1). Run it with `RUST_LOG=debug` to watch each session's life:
//! opened, GET parked, upgraded, closed and why. After `npm ci`, `?client=official` on the
//! page runs the official socket.io-client instead of the lesson's own.

fn main() {
    reverse_ajax_lab::run(Some("socket_io"));
}
