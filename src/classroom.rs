//! The lab in a classroom: bound to every interface (`--addr 0.0.0.0:8080`), reached by each
//! student's browser under the teacher machine's address.
//!
//! What changes from loopback, and where the lab handles it:
//!
//! 1. **The addresses to type.** `0.0.0.0` is not an address anyone can open: `student_urls`
//!    lists one URL per address of the machine's interfaces (`getifaddrs`); the log prints
//!    them at startup and the index page shows each with a QR code for phones (`qr_svg`).
//! 2. **Every URL the lab hands out** (the WebSocket URL in `/stats`) is built from the `Host`
//!    the browser sent (`public_host`), never from the bind address.
//! 3. **Origins.** `Lab::is_own_origin` accepts the origin the browser sees (`Host`'s host
//!    with the HTTP port) when that host is an IP address, `localhost` or this machine's name.
//! 4. **The other origin** of the cross-origin lessons is the same lab on a second port
//!    (`--other-addr`, the HTTP port + 2), so it exists for every student, not only on
//!    loopback.
//! 5. **Fair shares** (`ClientShares`): one student's fifty tabs cannot starve the room; each
//!    client address may hold `--max-per-client` connections for events at once.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a browser counts as "here" after its last request.
const HERE_FOR: Duration = Duration::from_secs(30);

/// Per lesson: requests in progress now, and which client addresses asked lately (the
/// teacher's view).
#[derive(Default)]
pub struct Activity {
    lessons: Mutex<BTreeMap<&'static str, LessonActivity>>,
}

#[derive(Default)]
struct LessonActivity {
    in_progress: usize,
    /// Per client address: when it last asked, and how many of its requests are in progress.
    seen: HashMap<IpAddr, (Instant, usize)>,
}

impl LessonActivity {
    fn forget_the_gone(&mut self, now: Instant) {
        self.seen
            .retain(|_, (at, holding)| *holding > 0 || now.duration_since(*at) < HERE_FOR);
    }
}

/// A request in progress for a lesson; counted until dropped.
pub struct InProgress {
    activity: Arc<Activity>,
    lesson: &'static str,
    ip: Option<IpAddr>,
}

impl Activity {
    /// A request (or a WebSocket) for `lesson` from `ip` begins.
    pub fn begin(self: &Arc<Self>, lesson: &'static str, ip: Option<IpAddr>) -> InProgress {
        let mut lessons = self.lessons.lock().unwrap_or_else(|p| p.into_inner());
        let entry = lessons.entry(lesson).or_default();
        entry.in_progress += 1;
        let now = Instant::now();
        entry.forget_the_gone(now);
        if let Some(ip) = ip {
            let (at, holding) = entry.seen.entry(ip).or_insert((now, 0));
            *at = now;
            *holding += 1;
        }
        InProgress {
            activity: self.clone(),
            lesson,
            ip,
        }
    }

    /// `{"lesson": {"in_progress": N, "browsers": M}}`: browsers are the client addresses
    /// holding a request now or seen in the last 30 s.
    pub fn to_json(&self) -> Value {
        let mut lessons = self.lessons.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut all = serde_json::Map::new();
        for (lesson, entry) in lessons.iter_mut() {
            entry.forget_the_gone(now);
            all.insert(
                lesson.to_string(),
                json!({ "in_progress": entry.in_progress, "browsers": entry.seen.len() }),
            );
        }
        Value::Object(all)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut lessons = self
            .activity
            .lessons
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = lessons.get_mut(self.lesson) {
            entry.in_progress = entry.in_progress.saturating_sub(1);
            if let Some((at, holding)) = self.ip.and_then(|ip| entry.seen.get_mut(&ip)) {
                *at = Instant::now();
                *holding = holding.saturating_sub(1);
            }
        }
    }
}

/// The URLs a student can type: one per interface address when the lab listens on every
/// interface (non-loopback first), else the one address it listens on.
pub fn student_urls(addr: SocketAddr, path: &str) -> Vec<String> {
    if !addr.ip().is_unspecified() {
        return vec![format!("http://{addr}{path}")];
    }
    let mut ips: Vec<IpAddr> = interface_addresses()
        .into_iter()
        .filter(|ip| ip.is_ipv4() == addr.is_ipv4() || addr.is_ipv6())
        .collect();
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6(), *ip));
    ips.dedup();
    ips.into_iter()
        .map(|ip| format!("http://{}{path}", SocketAddr::new(ip, addr.port())))
        .collect()
}

/// Is `url` at a loopback address (`127.0.0.0/8`, `::1`, `localhost`): this machine's own,
/// which no phone can open?
pub fn is_loopback_url(url: &str) -> bool {
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or("");
    let host = host_of(authority);
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Every address of this machine's interfaces (Linux, macOS and the BSDs: `getifaddrs`).
#[cfg(all(unix, not(lab_portable)))]
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return found;
    }
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                found.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                // Link-local addresses need a zone in a URL; no browser takes them typed.
                if ip.segments()[0] & 0xffc0 != 0xfe80 {
                    found.push(IpAddr::V6(ip));
                }
            }
        }
        entry = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The portable fallback, with std alone: loopback, and the address the system would send
/// from towards the outside world. (Connecting a UDP socket only chooses a route: no packet
/// is sent. 192.0.2.1 is TEST-NET-1, reserved for documentation.)
#[cfg(any(not(unix), lab_portable))]
pub fn interface_addresses() -> Vec<IpAddr> {
    let mut found = vec![IpAddr::from([127, 0, 0, 1])];
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| socket.connect("192.0.2.1:9").map(|()| socket))
        .and_then(|socket| socket.local_addr());
    if let Ok(local) = routed {
        if !local.ip().is_unspecified() {
            found.push(local.ip());
        }
    }
    found
}

/// The host a browser used to reach the lab (from its `Host` header), if it may be handed
/// back in URLs: an IP address, `localhost` or this machine's name. Else the bind address,
/// or `127.0.0.1` when that is `0.0.0.0`.
pub fn public_host(host_header: Option<&str>, bound: SocketAddr) -> String {
    if let Some(host) = host_header.map(host_of) {
        if is_lab_host(host) {
            return host.to_string();
        }
    }
    match bound.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".into(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

/// A QR code of `text` as an SVG element (for phones in the room).
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color>()
            .min_dimensions(120, 120)
            .quiet_zone(true)
            .build()
            // The renderer writes an XML declaration first; inline SVG in HTML starts at <svg.
            .split_once("<svg")
            .map_or(String::new(), |(_, svg)| format!("<svg{svg}")),
        Err(_) => String::new(),
    }
}

/// Connections for events each client address holds now, under `--max-per-client`.
#[derive(Default)]
pub struct ClientShares {
    held: Mutex<HashMap<IpAddr, usize>>,
    /// Requests refused past the share.
    pub refused: std::sync::atomic::AtomicU64,
    /// Refusals logged naming the client, once every 10 s per flood.
    refusals: RefusalLog,
}

/// A place taken by one client address; given back when dropped.
pub struct Share {
    shares: Arc<ClientShares>,
    /// `None`: the lab's own machine, not counted.
    ip: Option<IpAddr>,
}

/// Refusals past a client's share, logged naming the client: at info for the first of a
/// flood and then once every 10 s, the rest at debug (a flood of refusals would otherwise
/// flood the log too).
#[derive(Default)]
pub struct RefusalLog {
    last: Mutex<Option<(IpAddr, Instant)>>,
}

impl RefusalLog {
    pub fn note(&self, ip: IpAddr, why: &str) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|(who, at)| who == ip && at.elapsed() < Duration::from_secs(10)) {
            log::debug!("refused: {why}");
        } else {
            log::info!("refusing {ip} past its share: {why}");
            *last = Some((ip, Instant::now()));
        }
    }
}

/// The lab's own machine: the one loopback address each family's clients come from.
pub fn is_this_machine(ip: IpAddr) -> bool {
    ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
}

impl ClientShares {
    /// Take a place for `ip`, or `None` when it already holds `max`. The lab's own machine
    /// (`127.0.0.1`, `::1`: the teacher's browser, the tests, the benchmarks with their
    /// thousands of clients) is not limited; the room is.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Share> {
        let ip = if is_this_machine(ip) {
            return Some(Share {
                shares: self.clone(),
                ip: None,
            });
        } else {
            ip
        };
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= max {
            drop(held);
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let why = format!("{ip} holds {max} requests for events (--max-per-client)");
            self.refusals.note(ip, &why);
            return None;
        }
        *count += 1;
        Some(Share {
            shares: self.clone(),
            ip: Some(ip),
        })
    }

    /// Client addresses holding anything now, with how much (for the teacher's view).
    pub fn snapshot(&self) -> Vec<(IpAddr, usize)> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = held.iter().map(|(ip, n)| (*ip, *n)).collect();
        all.sort();
        all
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let mut held = self.shares.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&ip);
            }
        }
    }
}

/// The host part of a `Host` header: `192.168.1.5:8080` → `192.168.1.5`, `[::1]:8080` →
/// `[::1]`, `localhost` → `localhost`.
pub fn host_of(authority: &str) -> &str {
    let authority = authority.trim();
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// A host a browser may use for the lab: an IP address (`[v6]` too), `localhost`, or this
/// machine's own name.
pub fn is_lab_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || machine_name().is_some_and(|name| host.eq_ignore_ascii_case(&name))
}

/// This machine's host name (`gethostname`), if it has one.
#[cfg(all(unix, not(lab_portable)))]
pub fn machine_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The portable fallback: the name the environment gives (`COMPUTERNAME` on Windows,
/// `HOSTNAME` in most shells).
#[cfg(any(not(unix), lab_portable))]
pub fn machine_name() -> Option<String> {
    ["COMPUTERNAME", "HOSTNAME"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok())
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_addresses_include_loopback_on_either_build() {
        let found = interface_addresses();
        assert!(found.iter().any(|ip| ip.is_loopback()), "{found:?}");
        assert!(found.iter().all(|ip| !ip.is_unspecified()), "{found:?}");
    }

    #[test]
    fn a_loopback_lab_has_one_url_and_an_open_one_has_one_per_interface() {
        let one = student_urls("127.0.0.1:8080".parse().unwrap(), "/");
        assert_eq!(one, ["http://127.0.0.1:8080/"]);
        let all = student_urls("0.0.0.0:8080".parse().unwrap(), "/");
        assert!(
            all.contains(&"http://127.0.0.1:8080/".to_string()),
            "{all:?}"
        );
        assert!(all.iter().all(|u| !u.contains("0.0.0.0")));
    }

    #[test]
    fn the_host_handed_back_is_the_browsers_when_it_is_an_address() {
        let bound = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(public_host(Some("192.168.1.5:8080"), bound), "192.168.1.5");
        assert_eq!(public_host(Some("[::1]:8080"), bound), "[::1]");
        assert_eq!(public_host(Some("evil.example:8080"), bound), "127.0.0.1");
        assert_eq!(
            public_host(None, "127.0.0.2:1".parse().unwrap()),
            "127.0.0.2"
        );
    }

    #[test]
    fn shares_are_counted_per_address_and_given_back() {
        let shares = Arc::new(ClientShares::default());
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let first = shares.take(ip, 2).unwrap();
        let _second = shares.take(ip, 2).unwrap();
        assert!(shares.take(ip, 2).is_none(), "the third is refused");
        assert!(
            shares.take("10.0.0.8".parse().unwrap(), 2).is_some(),
            "others are not"
        );
        drop(first);
        assert!(shares.take(ip, 2).is_some());
        let home: IpAddr = "127.0.0.1".parse().unwrap();
        let many: Vec<_> = (0..5).map(|_| shares.take(home, 2)).collect();
        assert!(
            many.iter().all(Option::is_some),
            "the lab's own machine is not limited"
        );
    }

    #[test]
    fn loopback_urls_are_this_machines_own() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://127.0.0.2:80/x",
            "http://[::1]:8080/",
            "http://localhost:8080/",
        ] {
            assert!(super::is_loopback_url(url), "{url}");
        }
        for url in [
            "http://192.168.1.5:8080/",
            "http://[2001:db8::1]:8080/",
            "http://teacher.local:8080/",
        ] {
            assert!(!super::is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn a_qr_code_is_an_inline_svg() {
        let svg = qr_svg("http://192.168.1.5:8080/");
        assert!(
            svg.starts_with("<svg") && svg.ends_with("</svg>"),
            "{svg:.80}"
        );
    }
}
