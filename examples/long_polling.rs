//! Serves the long_polling lesson alone: `cargo run --example long_polling`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("long_polling"));
}
