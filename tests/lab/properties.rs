//! Property tests for every parser and escaper: for *any* input, not just the ones a test
//! author thought of, bad input is refused, and what is written into HTML, a script, an SSE
//! stream, a multipart body or an NDJSON line cannot escape its place.

use proptest::prelude::*;
use reverse_ajax_lab::http::{
    self, escape_html, event_data, is_callback_name, json_for_script, parse_cursor, Query,
};
use reverse_ajax_lab::lessons::{fetch_streaming, forever_iframe, multipart_streaming, sse};
use reverse_ajax_lab::Event;
use serde_json::{json, Value};

/// Any text, with a good share of the characters that break framings.
fn nasty_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        Just("</script>".to_string()),
        Just("</SCRIPT ".to_string()),
        Just("<!--".to_string()),
        Just("\u{2028}".to_string()),
        Just("--lab-event".to_string()),
        Just("data: x".to_string()),
        Just("\"'&<>".to_string()),
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

fn event(data: String) -> Event {
    Event { id: 7, data }
}

proptest! {
    /// A cursor is digits and nothing else; ahead of now, it is taken as now.
    #[test]
    fn cursors_are_digits_only(text in any::<String>(), now in 0u64..1_000_000) {
        let digits = !text.trim().is_empty() && text.trim().bytes().all(|b| b.is_ascii_digit());
        match parse_cursor(&text, now) {
            Ok(cursor) => {
                prop_assert!(digits, "accepted {text:?}");
                prop_assert!(cursor <= now);
                prop_assert_eq!(cursor, text.trim().parse::<u64>().unwrap().min(now));
            }
            Err(e) => {
                prop_assert_eq!(e.status, 400);
                prop_assert!(!digits || text.trim().parse::<u64>().is_err(), "refused {text:?}");
            }
        }
    }

    /// `since` and `timeout` in a query: any text, percent-encoded or not, is a number in range
    /// or a 400.
    #[test]
    fn query_numbers_are_in_range_or_refused(text in any::<String>()) {
        let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
        let query = Query::parse(&format!("timeout={encoded}&since={encoded}"));
        match query.number("timeout", 30, 1, 120) {
            Ok(n) => prop_assert!((1..=120).contains(&n)),
            Err(e) => prop_assert_eq!(e.status, 400),
        }
        if let Ok(since) = query.since(50) {
            prop_assert!(since <= 50);
        }
    }

    /// A callback is an identifier path: nothing that could end the call or start markup.
    #[test]
    fn callbacks_are_identifier_paths(name in any::<String>()) {
        if is_callback_name(&name) {
            prop_assert!(!name.is_empty() && name.len() <= 128);
            prop_assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "_$.".contains(c)));
            prop_assert!(!name.starts_with('.') && !name.ends_with('.') && !name.contains(".."));
            prop_assert!(!name.split('.').any(|part| part.starts_with(|c: char| c.is_ascii_digit())));
        }
    }

    /// Identifier paths that look right are accepted.
    #[test]
    fn plain_identifier_paths_are_accepted(name in "[a-zA-Z_$][a-zA-Z0-9_$]{0,10}(\\.[a-zA-Z_$][a-zA-Z0-9_$]{0,10}){0,3}") {
        prop_assert!(is_callback_name(&name));
    }

    /// JSON for a script: no `<`, `>` or `&` (so never `</script`), no line separators that
    /// old engines took as line ends; and it still means the same JSON.
    #[test]
    fn json_in_a_script_cannot_close_it(data in nasty_text()) {
        let value = json!({ "events": [{ "data": data, "id": 1 }] });
        let text = json_for_script(&value);
        prop_assert!(!text.to_ascii_lowercase().contains("</script"));
        let forbidden = ['<', '>', '&', '\u{2028}', '\u{2029}'];
        prop_assert!(!text.contains(forbidden), "{}", text);
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(back, value);
    }

    /// The forever iframe's script per event: one element, whatever the data.
    #[test]
    fn an_iframe_event_is_exactly_one_script(data in nasty_text()) {
        let frame = forever_iframe::frame(&event(data));
        prop_assert!(frame.starts_with("<script>parent.onEvent("));
        prop_assert!(frame.ends_with(")</script>\n"));
        prop_assert_eq!(frame.to_ascii_lowercase().matches("</script").count(), 1);
        prop_assert_eq!(frame.matches('<').count(), 2, "only the element's own tags");
    }

    /// HTML text: no markup survives, and unescaping gives the text back.
    #[test]
    fn html_escaping_leaves_no_markup(text in nasty_text()) {
        let escaped = escape_html(&text);
        let markup = ['<', '>', '"', '\''];
        prop_assert!(!escaped.contains(markup), "{}", escaped);
        let back = escaped
            .replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"")
            .replace("&#39;", "'").replace("&amp;", "&");
        prop_assert_eq!(back, text);
    }

    /// SSE: read back as EventSource would (lines end at CR, LF or CRLF; `data:` fields joined
    /// by LF), any data arrives intact but for line ends, which become LF.
    #[test]
    fn sse_frames_carry_any_data(data in nasty_text()) {
        let block = sse::sse_frame(&event(data.clone()));
        prop_assert!(block.ends_with("\n\n"));
        prop_assert!(!block.contains('\r'), "CR would end a line early");
        let body = &block[..block.len() - 2];
        let mut id = None;
        let mut lines = Vec::new();
        for line in body.split('\n') {
            if let Some(value) = line.strip_prefix("id: ") {
                id = Some(value.to_string());
            } else if let Some(value) = line.strip_prefix("data: ") {
                lines.push(value.to_string());
            } else {
                prop_assert!(false, "a line that is no field: {line:?}");
            }
        }
        prop_assert_eq!(id.as_deref(), Some("7"));
        prop_assert_eq!(lines.join("\n"), data.replace("\r\n", "\n").replace('\r', "\n"));
    }

    /// Multipart: the boundary line appears once per part, at its end, whatever the data.
    #[test]
    fn a_multipart_part_holds_no_early_boundary(data in nasty_text()) {
        let part = multipart_streaming::frame(&event(data.clone()));
        prop_assert!(part.ends_with("\r\n--lab-event\r\n"));
        prop_assert_eq!(part.matches("\r\n--lab-event").count(), 1);
        let body = part
            .strip_prefix("Content-Type: application/json\r\n\r\n").unwrap()
            .strip_suffix("\r\n--lab-event\r\n").unwrap();
        let back: Value = serde_json::from_str(body).unwrap();
        prop_assert_eq!(&back["data"], &json!(data));
    }

    /// NDJSON: one event, one line.
    #[test]
    fn an_ndjson_event_is_one_line(data in nasty_text()) {
        let line = fetch_streaming::ndjson_line(&event(data.clone()));
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1);
        prop_assert!(!line.contains('\r'));
        let back: Value = serde_json::from_str(line.trim_end()).unwrap();
        prop_assert_eq!(&back["data"], &json!(data));
    }

    /// A `/publish` body: text as it is; JSON only with a string `data`, else a 400.
    #[test]
    fn publish_bodies_are_text_or_json_with_data(body in nasty_text(), data in nasty_text()) {
        prop_assert_eq!(event_data(Some("text/plain"), body.clone()).unwrap(), body.clone());
        prop_assert_eq!(event_data(None, body.clone()).unwrap(), body.clone());
        let json_body = json!({ "data": data }).to_string();
        prop_assert_eq!(event_data(Some("application/json"), json_body).unwrap(), data);
        match event_data(Some("application/json"), body.clone()) {
            Ok(text) => {
                let value: Value = serde_json::from_str(&body).unwrap();
                prop_assert_eq!(&value["data"], &json!(text));
            }
            Err(e) => prop_assert_eq!(e.status, 400),
        }
    }
}

/// The property tests' own check: `json_for_script` is the escaper the JSONP answer uses.
#[test]
fn the_jsonp_answer_uses_the_script_escaper() {
    let value = json!({ "data": "</script>" });
    assert!(!json_for_script(&value).contains('<'));
    assert_eq!(http::whole_number("+5"), None);
    assert_eq!(http::whole_number("05"), Some(5));
}

/// Pieces of request heads, good and bad, and any bytes between them.
fn head_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"POST /publish HTTP/1.1\r\n".to_vec()),
        Just(b"GET / HTTP/1.0\r\n".to_vec()),
        Just(b"Host: lab\r\n".to_vec()),
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Content-Length: 6\r\n".to_vec()),
        Just(b"content-length: 5, 5\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Transfer-Encoding: xchunked\r\n".to_vec()),
        Just(b"transfer-encoding: chunked, identity\r\n".to_vec()),
        Just(b"Expect: 100-continue\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
}

proptest! {
    /// No bytes panic the request parser, and a head it accepts has exactly one framing: a
    /// length only when no `Transfer-Encoding` is there and every `Content-Length` agrees,
    /// chunked only without any `Content-Length`.
    #[test]
    fn no_bytes_panic_the_parser_or_frame_a_request_two_ways(bytes in head_bytes()) {
        use reverse_ajax_lab::request::{parse_head, read_body, Framing};
        let Ok(Some((head, length))) = parse_head(&bytes) else { return Ok(()); };
        let values = |name: &str| -> Vec<String> {
            head.headers.iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_string()).collect::<Vec<_>>())
                .collect()
        };
        let (lengths, codings) = (values("Content-Length"), values("Transfer-Encoding"));
        match Framing::of(&head) {
            Ok(Framing::None) => prop_assert!(lengths.is_empty() && codings.is_empty()),
            Ok(Framing::Length(n)) => {
                prop_assert!(codings.is_empty());
                prop_assert!(lengths.iter().all(|l| *l == n.to_string()));
            }
            Ok(Framing::Chunked) => {
                prop_assert!(lengths.is_empty());
                prop_assert_eq!(codings, vec!["chunked".to_string()]);
            }
            Err(refusal) => prop_assert!([400, 501].contains(&refusal.status)),
        }
        if let Ok(framing) = Framing::of(&head) {
            let mut rest = bytes[length..].to_vec();
            let mut nothing_more: &[u8] = &[];
            let _ = read_body(&mut nothing_more, &mut rest, &framing, 64, std::time::Instant::now() + std::time::Duration::from_millis(1));
        }
    }
}
