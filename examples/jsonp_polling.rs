//! Serves the jsonp_polling lesson alone: `cargo run --example jsonp_polling`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("jsonp_polling"));
}
