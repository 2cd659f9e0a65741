//! Serves the cors lesson alone: `cargo run --example cors`, then open
//! http://localhost:8080/lessons/cors (localhost: the page must be on the *other* origin).
//! Flags as for the lab (`-- --help`).

fn main() {
    reverse_ajax_lab::run(Some("cors"));
}
