//! Serves the Bayeux (CometD) lesson alone: `cargo run --example bayeux`, then open the URL it
//! logs in two tabs. `RUST_LOG=debug` shows each client handshaken, each connect parked, and
//! each client forgotten (disconnected, or silent past `--bayeux-max-interval`). After
//! `npm ci`, `?client=official` on the page runs the official CometD client instead.

fn main() {
    reverse_ajax_lab::run(Some("bayeux"));
}
