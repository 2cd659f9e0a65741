//! Serves the Atmosphere lesson alone: `cargo run --example atmosphere`, then open the URL it
//! logs. `RUST_LOG=debug` shows each resource created, each connection suspended and ended
//! (superseded, dropped, or its client gone), and each resource forgotten after
//! `--atmosphere-timeout`.

fn main() {
    reverse_ajax_lab::run(Some("atmosphere"));
}
