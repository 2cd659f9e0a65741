//! Serves the buffering lesson alone: `cargo run --example buffering`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("buffering"));
}
