//! What every connection thread shares, the core: the lab's configuration, its hub (and broker),
//! its counters and its addresses. Every lesson takes a `&Lab`; `server` builds one and hands
//! it to each thread. What a lesson owns (a framework's sessions, the waiting room) is not
//! here: `server` holds it (`LessonState`) and hands each lesson its own, so `Lab` imports no
//! lesson and no lesson imports another's state.

use crate::broker::{Broker, Unavailable};
use crate::forwarded::Client;
use crate::hub::{Event, Hub};
use crate::stats::{LessonCounters, Stats};
use crate::Config;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every connection thread shares: the configuration, the hub and the counters.
pub struct Lab {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// `--redis`: the broker every publish goes through (see `Lab::publish`).
    pub broker: Option<Arc<Broker>>,
    pub stats: Stats,
    /// Where the HTTP server really listens (port 0 resolved).
    pub addr: SocketAddr,
    /// `ws://HOST:PORT/events/ws`: the WebSocket lesson, on the HTTP port itself.
    pub websocket_url: String,
    /// The same lab on a second port: another origin for the cross-origin lessons.
    pub other_addr: SocketAddr,
    /// What each client address holds now, under `--max-per-client`.
    pub shares: Arc<crate::classroom::ClientShares>,
    /// Per lesson: requests in progress and browsers seen (the teacher's view).
    pub activity: Arc<crate::classroom::Activity>,
    /// The connection threads (`connection::Pool`): what `/stats` reads of them. Weak: the
    /// pool's handler holds the `Lab`, so a strong reference back would keep both alive
    /// forever after the lab stops (`RunningLab` owns the pool).
    pub connections: std::sync::OnceLock<std::sync::Weak<crate::connection::Pool>>,
    /// The one thread that waits for every idle WebSocket's next frame (`watcher`).
    pub watcher: crate::watcher::SocketWatcher,
    /// The lab's stop (`RunningLab::stop`): a flag, and a line its threads wait on.
    pub shutdown: crate::shutdown::Shutdown,
}

impl Lab {
    /// The handshake every WebSocket endpoint shares (`ws::accept`), with this lab's limits
    /// and counters, once the endpoint has `checked` its request.
    pub fn accept_websocket<T>(
        &self,
        request: crate::connection::Request,
        checked: Result<T, (u16, String)>,
    ) -> std::io::Result<Option<(T, crate::ws::Upgraded<'_>)>> {
        let counters = self.count("websocket");
        crate::ws::accept(
            &self.stats,
            self.config.max_parked,
            &counters,
            request,
            checked,
        )
    }

    /// Publish an event: numbered by the hub here, or, with `--redis`, numbered in Redis and
    /// brought back into the hub by the broker's reader (chapter 20). Only a broker can fail.
    pub fn publish(&self, data: impl Into<String>) -> Result<Arc<Event>, Unavailable> {
        match &self.broker {
            Some(broker) => broker.publish(&self.hub, data.into()),
            None => Ok(self.hub.publish(data)),
        }
    }

    /// Who sent `request`, and how its browser reached the lab: the connection's own peer
    /// and `Host`, or what a `--trust-proxy` proxy says (`crate::forwarded`).
    pub fn client(&self, request: &crate::connection::Request) -> Client {
        let peer = request
            .remote_addr()
            .map_or(self.addr.ip(), |address| address.ip());
        Client::of(request.head(), peer, &self.config.trusted_proxies)
    }

    /// The lab's address as `client`'s browser reaches it, for URLs handed to that browser:
    /// `http://HOST:PORT` (`ws://` with `websocket`), from its `Host`, never from the bind
    /// address (a classroom); behind a trusted proxy, the proxy's scheme and authority
    /// (`wss://192.168.1.5:8443`).
    pub fn base_url(&self, client: &Client, websocket: bool) -> String {
        let scheme = match (websocket, client.https) {
            (false, false) => "http",
            (false, true) => "https",
            (true, false) => "ws",
            (true, true) => "wss",
        };
        match client.host.as_deref() {
            Some(authority)
                if client.via_proxy
                    && crate::classroom::is_lab_host(crate::classroom::host_of(authority)) =>
            {
                format!("{scheme}://{authority}")
            }
            host => {
                let host = crate::classroom::public_host(host, self.addr);
                format!("{scheme}://{host}:{}", self.addr.port())
            }
        }
    }

    /// Is `origin` one of the lab's own pages? Its HTTP address under either loopback name,
    /// or, in a classroom, the name the browser itself used to reach the lab: the host part of
    /// `client.host` (the request's `Host`) with the lab's HTTP port is the lab's own origin as
    /// that browser sees it (`http://192.168.1.5:8080`). Behind a trusted proxy, the origin is
    /// the proxy's, as the proxy reports it (`https://192.168.1.5:8443`). Only a host that is
    /// an IP address, `localhost` or this machine's own name counts: a DNS name anyone can
    /// point at the lab's address would let their page in (DNS rebinding). (The WebSocket
    /// handshake, CORS, Socket.IO and Bayeux all ask.)
    pub fn is_own_origin(&self, origin: &str, client: &Client) -> bool {
        let port = self.addr.port();
        if origin == format!("http://{}", self.addr)
            || origin == format!("http://127.0.0.1:{port}")
            || origin == format!("http://localhost:{port}")
        {
            return true;
        }
        // Labs sharing a broker read each other (`--peer`, the scale-out lesson).
        if self.config.peers.iter().any(|peer| peer == origin) {
            return true;
        }
        let Some(authority) = client.host.as_deref() else {
            return false;
        };
        let host = crate::classroom::host_of(authority);
        if !crate::classroom::is_lab_host(host) {
            return false;
        }
        if client.via_proxy {
            origin == format!("{}://{authority}", client.scheme())
        } else {
            origin == format!("http://{host}:{port}")
        }
    }

    /// Why `origin` was refused, and what to do: the authority the lab saw the page at, and,
    /// when the request came through a proxy the lab does not trust (it carries
    /// `X-Forwarded-For`), the `--trust-proxy` that would make the proxy's word count.
    pub fn foreign_origin(&self, origin: &str, request: &crate::connection::Request) -> String {
        let client = self.client(request);
        let seen = client.host.as_deref().unwrap_or("no Host");
        let mut why = format!(
            "Origin {origin:?} is not one of the lab's own pages (it saw this page at {seen})"
        );
        let peer = request.remote_addr().map(|a| a.ip());
        if let Some(peer) = peer.filter(|_| !client.via_proxy) {
            if request.header("X-Forwarded-For").is_some() {
                why.push_str(&format!(
                    "; behind a proxy at {peer}, start the lab with --trust-proxy {peer}"
                ));
            }
        }
        why
    }

    /// CORS for the frameworks' HTTP transports (Socket.IO's polling, Bayeux): the lab's own
    /// origins, named exactly with credentials allowed (their clients may send cookies, and
    /// `*` is not allowed with credentials); `Vary: Origin` either way, so no cache hands one
    /// origin's answer to another.
    pub fn cors_with_credentials(
        &self,
        request: &crate::connection::Request,
    ) -> Vec<(&'static str, String)> {
        let client = self.client(request);
        match crate::http::header(request, "Origin") {
            Some(origin) if self.is_own_origin(origin, &client) => vec![
                ("Access-Control-Allow-Origin", origin.to_string()),
                ("Access-Control-Allow-Credentials", "true".into()),
                ("Vary", "Origin".into()),
            ],
            _ => vec![("Vary", "Origin".into())],
        }
    }

    /// The frameworks' CORS preflight (`OPTIONS` before a cross-origin POST): their CORS
    /// headers (`cors_with_credentials`), and GET and POST with a `Content-Type` allowed,
    /// remembered for ten minutes.
    pub fn preflight_with_credentials(
        &self,
        request: crate::connection::Request,
        counters: &crate::stats::LessonCounters,
    ) -> std::io::Result<()> {
        let mut headers = self.cors_with_credentials(&request);
        headers.push(("Access-Control-Allow-Methods", "GET, POST".into()));
        headers.push(("Access-Control-Allow-Headers", "Content-Type".into()));
        headers.push(("Access-Control-Max-Age", "600".into()));
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        crate::http::write_no_content(request, &headers, counters)
    }

    /// The WebSockets' port: the HTTP port itself.
    pub fn websocket_port(&self) -> u16 {
        self.addr.port()
    }

    /// Counters for a lesson, with this request counted.
    pub fn count(&self, lesson: &'static str) -> LessonCounters {
        let counters = self.stats.lesson(lesson);
        counters.request();
        counters
    }
}

/// An id nobody can guess (Socket.IO sessions, Bayeux clients): 15 random bytes from the
/// kernel, base64url (20 characters).
pub fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 15];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom (not Linux): std's hasher keys are random per process.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::UNIX_EPOCH
                    .elapsed()
                    .map_or(0, |d| d.as_nanos()),
            );
            let n = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}
