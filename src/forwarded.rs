//! Who sent a request, and how its browser reached the lab: from the TCP connection itself, or,
//! when the connection comes from a proxy the lab was told to trust (`--trust-proxy IP`), from
//! the `X-Forwarded-*` headers that proxy wrote.
//!
//! Behind nginx every request arrives from nginx's address, with nginx's idea of `Host`
//! (`127.0.0.1:8080`, the upstream) unless it is told otherwise. Without help the lab would
//! count the whole room as one client, hand out URLs for a port the browser cannot reach, and
//! refuse the browser's own `Origin` as foreign. The proxy says what it saw:
//!
//! ```text
//! X-Forwarded-For: 10.0.0.7, 192.168.1.23   ← what the client claimed, then who nginx saw
//! X-Forwarded-Host: 192.168.1.5:8081         ← the Host the browser sent to nginx
//! X-Forwarded-Proto: https                   ← the scheme the browser used
//! ```
//!
//! 1. Believe these headers only from a trusted proxy's address: anyone else can write them.
//! 2. In `X-Forwarded-For`, only the last entry: the proxy appends the address it saw, so the
//!    last entry is the client. Entries to its left are the client's own claims (anyone may
//!    send `X-Forwarded-For: 1.2.3.4`), and count for nothing. (One hop, as nginx's own
//!    `real_ip` module does by default: even when the client's address is also the proxy's,
//!    on one machine, its claims stay claims.)
//! 3. `X-Forwarded-Host` and `X-Forwarded-Proto` are set by the proxy (nginx's
//!    `proxy_set_header` replaces what the client sent): their last value counts.

use crate::request::Head;
use std::net::IpAddr;

/// A request's sender as the lab should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the TCP peer, or the one a trusted proxy saw.
    pub ip: IpAddr,
    /// The authority the browser used (`Host`, or the trusted proxy's `X-Forwarded-Host`):
    /// host, and port when the browser named one.
    pub host: Option<String>,
    /// The browser reached the lab (or its proxy) over TLS.
    pub https: bool,
    /// The request came through a trusted proxy: its peer is trusted and it carries at least
    /// one `X-Forwarded-*` header (a trusted machine's own direct request carries none).
    pub via_proxy: bool,
}

impl Client {
    /// Who sent `head` over a connection from `peer`, trusting the `X-Forwarded-*` headers
    /// only when `peer` is one of `trusted`.
    pub fn of(head: &Head, peer: IpAddr, trusted: &[IpAddr]) -> Client {
        let direct = Client {
            ip: peer,
            host: head.header("Host").map(str::to_string),
            https: false,
            via_proxy: false,
        };
        // 1. Only a trusted proxy's word counts, and only if it said something.
        let said = ["X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"]
            .iter()
            .any(|name| head.header(name).is_some());
        if !trusted.contains(&peer) || !said {
            return direct;
        }
        // 2. The last entry, which the proxy wrote. One that is not an address (or none at
        //    all: a proxy that does not set the header) leaves the peer.
        let ip = head
            .list("X-Forwarded-For")
            .last()
            .and_then(|entry| entry.parse::<IpAddr>().ok())
            .unwrap_or(peer);
        // 3. The proxy's own headers: their last value.
        let host = head
            .list("X-Forwarded-Host")
            .last()
            .filter(|h| !h.is_empty())
            .map(|h| h.to_string())
            .or(direct.host);
        let https = head
            .list("X-Forwarded-Proto")
            .last()
            .is_some_and(|p| p.eq_ignore_ascii_case("https"));
        Client {
            ip,
            host,
            https,
            via_proxy: true,
        }
    }

    /// `http` or `https`: the scheme of the page that sent this request.
    pub fn scheme(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Method;

    fn head(headers: &[(&str, &str)]) -> Head {
        Head {
            method: Method::Get,
            target: "/".into(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_from_anyone_but_a_trusted_proxy_are_ignored() {
        let forged = head(&[
            ("Host", "127.0.0.1:8080"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let client = Client::of(&forged, ip("127.0.0.5"), &[ip("127.0.0.3")]);
        assert_eq!(client.ip, ip("127.0.0.5"));
        assert_eq!(client.host.as_deref(), Some("127.0.0.1:8080"));
        assert!(!client.https && !client.via_proxy);
        // With no proxy trusted at all, the same.
        assert_eq!(
            Client::of(&forged, ip("127.0.0.3"), &[]).ip,
            ip("127.0.0.3")
        );
    }

    #[test]
    fn the_client_is_the_last_address_the_proxy_wrote() {
        let trusted = [ip("127.0.0.3")];
        // What the client claimed (1.2.3.4) is to the left of what nginx saw.
        let proxied = head(&[("X-Forwarded-For", "1.2.3.4, 192.168.1.23")]);
        let client = Client::of(&proxied, ip("127.0.0.3"), &trusted);
        assert_eq!(client.ip, ip("192.168.1.23"));
        assert!(client.via_proxy);
        // Over two header lines, the same: the last one's last entry.
        let split = head(&[
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-For", "192.168.1.23"),
        ]);
        assert_eq!(
            Client::of(&split, ip("127.0.0.3"), &trusted).ip,
            ip("192.168.1.23")
        );
        // A client on the proxy's own address claiming another: still a claim.
        let same_machine = head(&[("X-Forwarded-For", "6.6.6.6, 127.0.0.3")]);
        assert_eq!(
            Client::of(&same_machine, ip("127.0.0.3"), &trusted).ip,
            ip("127.0.0.3")
        );
        // Garbage where the address should be, or no header: the proxy itself.
        let garbage = head(&[("X-Forwarded-For", "1.2.3.4, not-an-address")]);
        assert_eq!(
            Client::of(&garbage, ip("127.0.0.3"), &trusted).ip,
            ip("127.0.0.3")
        );
        assert_eq!(
            Client::of(&head(&[]), ip("127.0.0.3"), &trusted).ip,
            ip("127.0.0.3")
        );
        let no_address = head(&[("X-Forwarded-Host", "127.0.0.1:8081")]);
        let client = Client::of(&no_address, ip("127.0.0.3"), &trusted);
        assert_eq!(client.ip, ip("127.0.0.3"));
        assert!(client.via_proxy);
    }

    #[test]
    fn a_trusted_proxy_says_which_host_and_scheme_the_browser_used() {
        let proxied = head(&[
            ("Host", "127.0.0.1:8080"),
            ("X-Forwarded-Host", "192.168.1.5:8443"),
            ("X-Forwarded-Proto", "https"),
        ]);
        let client = Client::of(&proxied, ip("127.0.0.1"), &[ip("127.0.0.1")]);
        assert_eq!(client.host.as_deref(), Some("192.168.1.5:8443"));
        assert_eq!(client.scheme(), "https");
        // Only X-Forwarded-For: the Host it sent, over http.
        let only_for = head(&[("Host", "127.0.0.1:8080"), ("X-Forwarded-For", "10.0.0.2")]);
        let client = Client::of(&only_for, ip("127.0.0.1"), &[ip("127.0.0.1")]);
        assert_eq!(client.host.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(client.scheme(), "http");
        assert!(client.via_proxy);
        // None at all: the trusted machine's own direct request, not a proxied one.
        let direct = head(&[("Host", "127.0.0.1:8080")]);
        let client = Client::of(&direct, ip("127.0.0.1"), &[ip("127.0.0.1")]);
        assert!(!client.via_proxy);
    }
}
