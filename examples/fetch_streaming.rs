//! Serves the fetch_streaming lesson alone: `cargo run --example fetch_streaming`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("fetch_streaming"));
}
