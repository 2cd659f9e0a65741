//! Serves the sse lesson alone: `cargo run --example sse`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("sse"));
}
