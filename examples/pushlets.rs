//! Serves the Pushlets lesson alone: `cargo run --example pushlets`, then open the URL it logs.
//! `RUST_LOG=debug` shows each session join, publish, and end (left, or expired after
//! `--pushlets-timeout` with nobody listening).

fn main() {
    reverse_ajax_lab::run(Some("pushlets"));
}
