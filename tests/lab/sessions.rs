//! The frameworks' sessions, bounded (`src/sessions.rs`): Socket.IO's sessions, Bayeux's
//! clients, Pushlets' sessions and Atmosphere's resources. A loop of handshakes from one client
//! stops at its cap, each refusal in its protocol's own words; another client is served
//! meanwhile; the lab's cap holds for all; and sessions that expire leave `/stats` at zero,
//! their places given back.

use crate::common::{self, start_lab_with};
use reverse_ajax_lab::client::{send_from, Response};
use reverse_ajax_lab::sessions::SessionLimits;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A framework's handshake, as its client sends it, and how to read the answer.
struct Framework {
    /// Its name under `/stats` `sessions`.
    name: &'static str,
    handshake: fn(SocketAddr, IpAddr) -> Response,
    /// The answer opened a session.
    opened: fn(&Response) -> bool,
    /// The answer is the protocol's own refusal.
    refused: fn(&Response) -> bool,
}

const FRAMEWORKS: [Framework; 4] = [
    Framework {
        name: "socket_io",
        handshake: |addr, from| {
            send_from(
                from,
                addr,
                "GET",
                "/socket.io/?EIO=4&transport=polling",
                &[],
                b"",
            )
            .unwrap()
        },
        opened: |r| r.status == 200 && r.body.starts_with("0{"),
        // Engine.IO's error object, as its `allowRequest` refuses: 403, code 4.
        refused: |r| r.status == 403 && r.json()["code"] == 4,
    },
    Framework {
        name: "bayeux",
        handshake: |addr, from| {
            let body = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"id":"1"}]"#;
            let json = [("Content-Type", "application/json")];
            send_from(from, addr, "POST", "/cometd", &json, body.as_bytes()).unwrap()
        },
        opened: |r| r.json()[0]["successful"] == true,
        // An unsuccessful handshake, advising another later.
        refused: |r| {
            let reply = &r.json()[0];
            reply["successful"] == false
                && reply["error"] == "503::too_many_clients"
                && reply["advice"]["reconnect"] == "handshake"
                && reply["advice"]["interval"].as_u64() > Some(0)
        },
    },
    Framework {
        name: "pushlets",
        handshake: |addr, from| {
            let path = "/pushlet/pushlet.srv?p_event=join&p_format=xml";
            send_from(from, addr, "GET", path, &[], b"").unwrap()
        },
        opened: |r| r.status == 200 && r.body.contains(r#"p_event="join-ack""#),
        // Its nack, with a reason.
        refused: |r| {
            r.status == 503 && r.body.contains(r#"p_event="nack""#) && r.body.contains("later")
        },
    },
    Framework {
        name: "atmosphere",
        handshake: |addr, from| {
            let path = "/atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=long-polling&X-atmo-protocol=true";
            send_from(from, addr, "GET", path, &[], b"").unwrap()
        },
        opened: |r| r.status == 200 && r.body.contains('|'),
        // 503, to come back later.
        refused: |r| r.status == 503 && r.header("Retry-After").is_some(),
    },
];

/// One client's loop of handshakes stops at `--max-sessions-per-client`, refused in each
/// protocol's words; a second client is served meanwhile, until the framework's
/// `--max-sessions` is met too; `/stats` counts both, for each framework apart.
#[test]
fn a_loop_of_handshakes_stops_at_the_caps_and_another_client_is_served() {
    let lab = start_lab_with(|c| {
        c.sessions = SessionLimits {
            max: 15,
            per_client: 10,
        }
    });
    let addr = lab.addr();
    for framework in &FRAMEWORKS {
        let name = framework.name;
        for n in 0..25 {
            let answer = (framework.handshake)(addr, A);
            match n < 10 {
                true => assert!((framework.opened)(&answer), "{name} #{n}: {answer:?}"),
                false => assert!((framework.refused)(&answer), "{name} #{n}: {answer:?}"),
            }
        }
        // The other client: served, up to the framework's cap.
        for n in 0..5 {
            let answer = (framework.handshake)(addr, B);
            assert!((framework.opened)(&answer), "{name}, B #{n}: {answer:?}");
        }
        let answer = (framework.handshake)(addr, B);
        assert!(
            (framework.refused)(&answer),
            "{name}: over the lab's cap: {answer:?}"
        );
        let sessions = common::stats(addr)["sessions"][name].clone();
        assert_eq!(sessions["open"], 15, "{name}: {sessions}");
        assert_eq!(sessions["clients"], 2, "{name}: {sessions}");
        assert_eq!(sessions["refused"], 16, "{name}: {sessions}");
    }
}

/// Sessions nobody comes back for expire on time (the sweeper wakes for each when it is due):
/// `/stats` shows them gone, and the client's places are given back.
#[test]
fn sessions_that_expire_leave_nothing_and_give_their_places_back() {
    let lab = start_lab_with(|c| {
        c.sessions = SessionLimits {
            max: 100,
            per_client: 10,
        };
        c.socket_io.ping_interval = Duration::from_millis(300);
        c.socket_io.ping_timeout = Duration::from_millis(300);
        c.socket_io.connect_timeout = Duration::from_millis(500);
        c.bayeux.timeout = Duration::from_millis(500);
        c.bayeux.max_interval = Duration::from_millis(500);
        c.pushlets_timeout = Duration::from_millis(500);
        c.atmosphere_timeout = Duration::from_millis(500);
    });
    let addr = lab.addr();
    for framework in &FRAMEWORKS {
        for _ in 0..10 {
            assert!((framework.opened)(&(framework.handshake)(addr, A)));
        }
        assert!((framework.refused)(&(framework.handshake)(addr, A)));
    }
    common::wait_until("every framework's sessions expired", || {
        let sessions = common::stats(addr)["sessions"].clone();
        FRAMEWORKS
            .iter()
            .all(|f| sessions[f.name]["open"] == 0 && sessions[f.name]["clients"] == 0)
    });
    for framework in &FRAMEWORKS {
        let answer = (framework.handshake)(addr, A);
        assert!(
            (framework.opened)(&answer),
            "{}: {answer:?}",
            framework.name
        );
    }
    let s = common::stats(addr);
    assert_eq!(s["socket_io_sessions"], 1);
    assert_eq!(s["bayeux_clients"], 1);
    assert_eq!(s["pushlets_sessions"], 1);
    assert_eq!(s["atmosphere"]["resources"], 1);
}

/// A Socket.IO session born on a WebSocket and an Atmosphere resource opened by a WebSocket
/// are refused before the `101`, as an HTTP answer; Bayeux's handshake on a socket gets its
/// unsuccessful reply there.
#[test]
fn a_websocket_over_the_cap_is_refused_before_its_upgrade() {
    let lab = start_lab_with(|c| {
        c.sessions = SessionLimits {
            max: 100,
            per_client: 1,
        }
    });
    let addr = lab.addr();
    let ws = |path: &str| common::websocket_handshake(&format!("ws://{addr}{path}"), None);
    let socket_io = "/socket.io/?EIO=4&transport=websocket";
    let atmosphere = "/atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=websocket&X-atmo-protocol=true";
    let _first = ws(socket_io).unwrap();
    match ws(socket_io) {
        Err(tungstenite::Error::Http(answer)) => assert_eq!(answer.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let _first = ws(atmosphere).unwrap();
    match ws(atmosphere) {
        Err(tungstenite::Error::Http(answer)) => assert_eq!(answer.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let mut socket = ws("/cometd").unwrap();
    let handshake = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["websocket"],"id":"1"}]"#;
    for expected in [true, false] {
        socket.send(tungstenite::Message::text(handshake)).unwrap();
        let reply: serde_json::Value =
            serde_json::from_str(socket.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(reply[0]["successful"], expected, "{reply}");
    }
}
