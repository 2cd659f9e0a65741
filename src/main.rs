//! `cargo run`: every lesson on http://127.0.0.1:8080/ (see `--help`).

fn main() {
    reverse_ajax_lab::run(None);
}
