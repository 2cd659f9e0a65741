//! Serves the multipart_streaming lesson alone: `cargo run --example multipart_streaming`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("multipart_streaming"));
}
