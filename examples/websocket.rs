//! Serves the websocket lesson alone: `cargo run --example websocket`, then open the URL it
//! logs. WebSockets upgrade on the HTTP port itself.

fn main() {
    reverse_ajax_lab::run(Some("websocket"));
}
