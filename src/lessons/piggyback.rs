//! # Piggyback polling (捎带轮询): events ride along on requests the page sends anyway.
//!
//! There is no timer. When the user submits the form, the answer carries two things: the
//! answer to the form, and every event waiting since the page's cursor.
//!
//! ```text
//! POST /events/piggyback?since=4 HTTP/1.1
//! Content-Type: application/x-www-form-urlencoded
//!
//! name=Ada&email=ada%40example.org&age=36
//!
//! HTTP/1.1 200 OK
//! Content-Type: application/json
//!
//! {"errors":{},"events":[{"data":"At ...","id":5}],"formValid":true,"last":5}
//!   (the user reads for a minute; events 6..9 wait on the server, unseen)
//! ```
//!
//! 1. Read the cursor.
//! 2. Read and validate the form. A request with no form at all is refused: piggyback never
//!    answers a request sent only to ask for events (that would be polling).
//! 3. Answer the form (valid? which fields are wrong?) and attach the events after the cursor.
//!
//! **What it costs**: no empty requests at all, and no extra ones; but an event waits until the
//! user happens to do something, which may be never. Good for "you have new mail" beside a
//! busy form, useless for a chat.
//!
//! **Try it**: `cargo run --example piggyback`, open
//! <http://127.0.0.1:8080/lessons/piggyback>, or
//! `curl -s -d 'name=Ada&email=ada@example.org&age=36' 'http://127.0.0.1:8080/events/piggyback?since=0'`.

use crate::connection::Request;
use crate::http::{self, HttpError, Query};
use crate::lab::Lab;
use crate::lessons::events_answer;
use serde_json::{json, Map, Value};
use std::io;

pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("piggyback");
    // 1. The cursor.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    // 2. The form.
    let form = match http::read_body(&request, lab.config.max_body) {
        Ok(body) => Query::parse(&body),
        Err(e) => return e.reply(request, &counters),
    };
    let errors = validate(&form);
    if errors.len() == FIELDS.len() && FIELDS.iter().all(|f| form.get(f).is_none()) {
        let message = "piggyback rides on a real request: send the form (name, email, age)";
        return HttpError::bad_request(message).reply(request, &counters);
    }
    // 3. The form's answer with the events on its back.
    let backlog = lab.hub.since(since);
    counters.delivered(backlog.events.len());
    let mut answer = events_answer(&backlog, since);
    answer["formValid"] = json!(errors.is_empty());
    answer["errors"] = Value::Object(errors);
    http::write_json(request, &answer, &counters)
}

const FIELDS: [&str; 3] = ["name", "email", "age"];

/// The form's rules: a name of 1–40 characters, an address with `@` and a dot after it, an
/// age from 13 to 120. Returns the message for each field that breaks its rule.
pub fn validate(form: &Query) -> Map<String, Value> {
    let mut errors = Map::new();
    let name = form.get("name").unwrap_or("").trim();
    if name.is_empty() || name.chars().count() > 40 {
        errors.insert(
            "name".into(),
            json!("a name of 1 to 40 characters is required"),
        );
    }
    let email = form.get("email").unwrap_or("").trim();
    let looks_like_address = email.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty() && domain.contains('.') && !domain.ends_with('.')
    });
    if !looks_like_address {
        errors.insert(
            "email".into(),
            json!("an address like ada@example.org is required"),
        );
    }
    match form.get("age").unwrap_or("").trim().parse::<u32>() {
        Ok(13..=120) => {}
        _ => {
            errors.insert(
                "age".into(),
                json!("a whole number from 13 to 120 is required"),
            );
        }
    }
    errors
}
