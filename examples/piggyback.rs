//! Serves the piggyback lesson alone: `cargo run --example piggyback`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("piggyback"));
}
