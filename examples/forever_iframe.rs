//! Serves the forever_iframe lesson alone: `cargo run --example forever_iframe`, then open the URL it logs.
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("forever_iframe"));
}
