//! # Behind a proxy: what nginx in front of a push server buffers, cuts and hides, and the
//! few lines that make it pass everything on.
//!
//! The articles warn that proxies buffer streams and cut long connections. Here a real nginx
//! stands between the browser and the lab, with a config this module writes
//! (`nginx_config`): one location with what a push server needs, and three that each leave one
//! thing out.
//!
//! ```text
//! GET /events/sse-unmarked HTTP/1.1          → nginx → the lab (no X-Accel-Buffering: no)
//! HTTP/1.1 200 OK
//! Content-Type: text/event-stream
//!   (event 1 is published: the lab writes it; nginx keeps it in its buffer)
//!   (time passes: event 2, 3, ... the same)
//!   (the buffer fills: events 1 to 40 arrive at once)
//!
//! GET /short-timeout/events/long-poll?timeout=10 HTTP/1.1   (proxy_read_timeout 5s)
//!   (time passes: 5 s, and nothing from the lab)
//! HTTP/1.1 504 Gateway Time-out                 ← nginx gives up before the lab answers
//! ```
//!
//! 1. **Buffering.** nginx reads a response into its buffers (`proxy_buffering on`, its
//!    default) and passes it on when they fill or the response ends. Every stream of the lab
//!    says `X-Accel-Buffering: no` (`http::ChunkedStream`), which turns that off for it;
//!    `GET /events/sse-unmarked` (`unmarked_sse`) is the same SSE stream without the header,
//!    so its events wait, unless the location says `proxy_buffering off`.
//! 2. **Timeouts.** nginx gives up on a response when the lab sends nothing for
//!    `proxy_read_timeout` (60 s by default): a long poll held longer dies as a 504, and a
//!    stream quiet for longer is cut. Deadlines must sit below it, heartbeats more often.
//! 3. **WebSocket.** `Upgrade` and `Connection` are hop-by-hop headers: nginx drops them unless
//!    told to pass them on (and to speak HTTP/1.1 to the lab). Without them the lab sees a
//!    plain GET and answers 426, and the browser's WebSocket fails.
//! 4. **Who is who.** Every request comes from nginx's address, with nginx's `Host`. With
//!    `--trust-proxy IP`, the lab believes that proxy's `X-Forwarded-*` headers and no one
//!    else's (`crate::forwarded`); `GET /behind-a-proxy` (`who_is_who`) shows what it sees.
//! 5. **Six connections.** Over HTTP/1.1 a browser opens at most six connections per host: a
//!    seventh stream waits for one of them to end. Over HTTP/2 (nginx with TLS) every stream
//!    is one more stream on one connection.
//!
//! **What it costs**: a hop: each event is read and written once more, by nginx (REFERENCE.md
//! measures how much, per technique). And each held request holds two connections, the
//! browser's to nginx and nginx's to the lab.
//!
//! **Try it**: `cargo run --example behind_a_proxy` writes an nginx config, prints the command
//! that starts nginx with it, and serves the lab; then open
//! <http://127.0.0.1:8081/lessons/behind_a_proxy>, through nginx.

use crate::connection::Request;
use crate::http::{self, Query};
use crate::lab::Lab;
use crate::lessons::sse;
use serde_json::json;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Step 1: `GET /events/sse-unmarked`: the SSE lesson's stream, cursor and all, without the
/// `X-Accel-Buffering: no` that asks a proxy not to collect it.
pub fn unmarked_sse(
    lab: &Lab,
    room: &crate::waiting_room::WaitingRoom,
    request: Request,
    query: &Query,
) -> io::Result<()> {
    let counters = lab.count("behind_a_proxy");
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    // SSE's framing, without `X-Accel-Buffering: no`.
    let framing = crate::stream::Framing {
        unmarked: true,
        ..sse::framing()
    };
    // This thread BLOCKS in `serve` as in every stream: on the hub's bell, woken by a
    // publish, the heartbeat, or the client leaving (or is free: `--parking queue`).
    crate::stream::serve(lab, room, request, since, None, &framing, &counters)
}

/// Step 4: `GET /behind-a-proxy`: who the lab thinks sent this request, and why: the TCP peer,
/// the forwarding headers as they came, whether they were believed, and what follows (the
/// client address that counts for `--max-per-client`, the origin, the URLs handed out).
pub fn who_is_who(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("behind_a_proxy");
    let client = lab.client(&request);
    let peer = request.remote_addr().map(|a| a.to_string());
    let header = |name| http::header(&request, name);
    let value = json!({
        "peer": peer,
        "host_header": header("Host"),
        "x_forwarded_for": header("X-Forwarded-For"),
        "x_forwarded_host": header("X-Forwarded-Host"),
        "x_forwarded_proto": header("X-Forwarded-Proto"),
        "trusted_proxies": lab.config.trusted_proxies,
        "via_proxy": client.via_proxy,
        "client": client.ip,
        "origin": lab.base_url(&client, false),
        "websocket": format!("{}/events/ws", lab.base_url(&client, true)),
    });
    http::write_json(request, &value, &counters)
}

/// What `nginx_config` writes: where nginx listens, where the lab is, where nginx keeps its
/// files.
#[derive(Clone, Debug)]
pub struct NginxSetup {
    /// HTTP/1.1, the browser's six-connections world.
    pub listen: SocketAddr,
    /// HTTP/2 over TLS, when a certificate is given.
    pub tls: Option<Tls>,
    /// The lab's HTTP address.
    pub lab: SocketAddr,
    /// nginx's own folder: its pid file, error log and temporary files (so it runs as any
    /// user, beside a system nginx).
    pub dir: PathBuf,
    /// `proxy_read_timeout` of the `/short-timeout/` location.
    pub short_timeout: Duration,
    /// The address nginx connects to the lab from (`proxy_bind`), so that the lab can tell
    /// nginx from a direct client on the same machine (`--trust-proxy` that address).
    pub bind: Option<IpAddr>,
}

/// HTTP/2 over TLS: where, and the certificate and key (PEM files).
#[derive(Clone, Debug)]
pub struct Tls {
    pub listen: SocketAddr,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl NginxSetup {
    /// nginx on `lab`'s port + 1 (HTTP/1.1), files under `dir`, a 5-second short timeout.
    pub fn for_lab(lab: SocketAddr, dir: PathBuf) -> NginxSetup {
        NginxSetup {
            listen: SocketAddr::new(lab.ip(), lab.port().wrapping_add(1)),
            tls: None,
            lab,
            dir,
            short_timeout: Duration::from_secs(5),
            bind: None,
        }
    }
}

/// The nginx binary to start: Debian's `/usr/sbin/nginx` when it is there (`/usr/sbin` is not
/// on every user's `PATH`), else `nginx` from the `PATH`.
pub fn nginx_binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// nginx running with `nginx_config`'s config, stopped when dropped: what the tests and
/// `--measure` start. (The example only prints the command: you start your nginx yourself.)
pub struct RunningNginx {
    child: std::process::Child,
    /// Where it listens for HTTP/1.1.
    pub addr: SocketAddr,
}

impl RunningNginx {
    /// Write the config into `setup.dir`, start `binary` (`nginx`, or its path) with it, and
    /// return once it answers `GET /stats` (passed on to the lab), within 30 s.
    pub fn start(setup: &NginxSetup, binary: &str) -> io::Result<RunningNginx> {
        let config = setup.dir.join("nginx.conf");
        std::fs::write(&config, nginx_config(setup))?;
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&setup.dir)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let nginx = RunningNginx {
            child,
            addr: setup.listen,
        };
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !crate::client::get(nginx.addr, "/stats").is_ok_and(|r| r.status == 200) {
            if std::time::Instant::now() > end {
                let log = std::fs::read_to_string(setup.dir.join("error.log")).unwrap_or_default();
                return Err(io::Error::other(format!("nginx did not answer: {log}")));
            }
            // BLOCKS: 20 ms between tries while nginx starts.
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for RunningNginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker, then itself (a SIGKILL would leave the
        // worker running, holding the port).
        #[cfg(all(unix, not(lab_portable)))]
        // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        #[cfg(any(not(unix), lab_portable))]
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A path in an nginx config: quoted, with `"` and `\` escaped.
fn quoted(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The whole nginx config for `setup`: one location that passes everything on at once
/// (`/`), and three that each show one trap (`/unbuffered/` shows the other fix for the
/// first). Run it with `nginx -p DIR -c DIR/nginx.conf`.
pub fn nginx_config(setup: &NginxSetup) -> String {
    let dir = |name: &str| quoted(&setup.dir.join(name));
    let lab = setup.lab;
    let short = setup.short_timeout.as_secs().max(1);
    let tls = match &setup.tls {
        Some(tls) => format!(
            "        # HTTP/2 needs TLS in browsers: every stream of a page on one connection.\n\
             \x20       listen {} ssl http2;\n\
             \x20       ssl_certificate {};\n\
             \x20       ssl_certificate_key {};\n",
            tls.listen,
            quoted(&tls.certificate),
            quoted(&tls.key)
        ),
        None => String::new(),
    };
    let bind = match setup.bind {
        Some(ip) => format!(
            "        # Connect to the lab from this address: the lab trusts it (--trust-proxy).\n\
             \x20       proxy_bind {ip};\n"
        ),
        None => String::new(),
    };
    format!(
        r#"# nginx in front of the Reverse Ajax Lab (LESSONS.md and REFERENCE.md, chapter 21).
# Written by the behind_a_proxy lesson. Start: nginx -p {dir_plain} -c {config_plain}
daemon off;
worker_processes 1;
pid {pid};
error_log {error_log} notice;
# Each held request is two connections here (the browser's, and nginx's to the lab).
worker_rlimit_nofile 10000;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    # A WebSocket handshake asks to upgrade; anything else closes after its answer.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    server {{
        listen {listen};
{tls}{bind}
        # What a push server needs from its proxy. Inherited by every location below that
        # sets no proxy_set_header of its own.
        proxy_http_version 1.1;                            # chunked streams, WebSocket
        proxy_set_header Upgrade $http_upgrade;            # hop-by-hop: passed on only if told
        proxy_set_header Connection $connection_upgrade;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;   # who is who:
        proxy_set_header X-Forwarded-Host $http_host;      # believed with --trust-proxy
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_read_timeout 150s;                           # above the longest hold (120 s)

        # 1. Everything passes on. (proxy_buffering stays on, nginx's default: the lab's
        #    streams say X-Accel-Buffering: no.)
        location / {{
            proxy_pass http://{lab};
        }}

        # 2. A read timeout below the lab's holds: a long poll held longer is a 504, and a
        #    stream quieter than this is cut (the heartbeat keeps it alive).
        location /short-timeout/ {{
            proxy_read_timeout {short}s;
            proxy_pass http://{lab}/;
        }}

        # 3. nginx's defaults alone: HTTP/1.0 to the lab (so a stream's body ends when the
        #    connection does, and nginx holds it until a 4 KiB buffer fills, unless the answer
        #    says X-Accel-Buffering: no), no Upgrade or Connection passed on, nginx's Host, no
        #    X-Forwarded-*, a 60 s read timeout.
        location /bare/ {{
            proxy_http_version 1.0;
            proxy_set_header Host $proxy_host;
            proxy_set_header Connection close;
            proxy_read_timeout 60s;
            proxy_pass http://{lab}/;
        }}

        # 4. The same defaults with buffering off: everything passes on as it comes.
        location /unbuffered/ {{
            proxy_http_version 1.0;
            proxy_set_header Host $proxy_host;
            proxy_set_header Connection close;
            proxy_read_timeout 60s;
            proxy_buffering off;
            proxy_pass http://{lab}/;
        }}
    }}
}}
"#,
        dir_plain = setup.dir.display(),
        config_plain = setup.dir.join("nginx.conf").display(),
        pid = dir("nginx.pid"),
        error_log = dir("error.log"),
        body = dir("body"),
        proxy = dir("proxy"),
        fastcgi = dir("fastcgi"),
        uwsgi = dir("uwsgi"),
        scgi = dir("scgi"),
        listen = setup.listen,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_lab_every_location_and_the_tls_listener_when_asked() {
        let lab: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut setup = NginxSetup::for_lab(lab, PathBuf::from("/tmp/lab nginx"));
        let plain = nginx_config(&setup);
        assert_eq!(setup.listen.port(), 8081);
        for line in [
            "listen 127.0.0.1:8081;",
            "proxy_pass http://127.0.0.1:8080;",
            "location /unbuffered/",
            "proxy_read_timeout 5s;",
            "location /bare/",
            "pid \"/tmp/lab nginx/nginx.pid\";",
        ] {
            assert!(plain.contains(line), "missing {line:?} in\n{plain}");
        }
        assert!(!plain.contains("ssl") && !plain.contains("proxy_bind"));
        setup.tls = Some(Tls {
            listen: "127.0.0.1:8443".parse().unwrap(),
            certificate: "/c/cert.pem".into(),
            key: "/c/key\"s.pem".into(),
        });
        setup.bind = Some("127.0.0.3".parse().unwrap());
        let tls = nginx_config(&setup);
        assert!(tls.contains("listen 127.0.0.1:8443 ssl http2;"));
        assert!(tls.contains("ssl_certificate_key \"/c/key\\\"s.pem\";"));
        assert!(tls.contains("proxy_bind 127.0.0.3;"));
    }
}
