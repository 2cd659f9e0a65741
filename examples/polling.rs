//! Serves the polling lesson alone: `cargo run --example polling`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("polling"));
}
