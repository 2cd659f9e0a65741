//! Serves the websocket lesson alone: `cargo run --example websocket`, then open the URL it
//! logs. The WebSocket listener takes the HTTP port + 1 (`--ws-addr` to choose).

fn main() {
    reverse_ajax_lab::run(Some("websocket"));
}
