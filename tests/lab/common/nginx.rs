//! A real nginx in front of a lab, on free ports, with the config the behind_a_proxy lesson
//! writes (`RunningNginx`), and a self-signed certificate for its HTTP/2 port. The test
//! command (scripts/test) installs Debian's nginx and openssl when they are missing.

use super::free_port;
use reverse_ajax_lab::lessons::behind_a_proxy::{nginx_binary, NginxSetup, RunningNginx, Tls};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Nginx {
    /// Stopped (dropped) first, then its folder removed.
    running: Option<RunningNginx>,
    /// nginx's HTTP/1.1 port.
    pub addr: SocketAddr,
    /// Its HTTP/2 port (TLS), when started with one.
    pub tls: Option<SocketAddr>,
    /// The certificate's public key hash, for Chromium's
    /// `--ignore-certificate-errors-spki-list` (trust this certificate, and only it).
    spki: Option<String>,
    dir: PathBuf,
}

impl Nginx {
    /// nginx in front of `lab`, its setup first changed by `tweak` (a short timeout, a
    /// `proxy_bind`...).
    pub fn start(lab: SocketAddr, tweak: impl FnOnce(&mut NginxSetup)) -> Nginx {
        Nginx::start_with(lab, false, tweak)
    }

    /// `start`, with an HTTP/2 port over TLS too (a certificate made now by openssl).
    pub fn start_with_tls(lab: SocketAddr) -> Nginx {
        Nginx::start_with(lab, true, |_| {})
    }

    fn start_with(lab: SocketAddr, tls: bool, tweak: impl FnOnce(&mut NginxSetup)) -> Nginx {
        let dir = super::fresh_temp_dir("nginx");
        let mut setup = NginxSetup::for_lab(lab, dir.clone());
        setup.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut spki = None;
        if tls {
            let (certificate, key, hash) = self_signed_certificate(&dir);
            setup.tls = Some(Tls {
                listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
                certificate,
                key,
            });
            spki = Some(hash);
        }
        tweak(&mut setup);
        let running = RunningNginx::start(&setup, nginx_binary()).unwrap_or_else(|e| {
            panic!(
                "nginx did not start ({e}); the README's test command (scripts/test) installs it"
            )
        });
        Nginx {
            running: Some(running),
            addr: setup.listen,
            tls: setup.tls.as_ref().map(|t| t.listen),
            spki,
            dir,
        }
    }

    /// Chromium's flags to trust this nginx's certificate.
    pub fn chromium_flags(&self) -> Vec<String> {
        let spki = self.spki.as_deref().expect("started with TLS");
        vec![format!("--ignore-certificate-errors-spki-list={spki}")]
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        drop(self.running.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A certificate for 127.0.0.1 made by openssl in `dir`: its file, its key's file, and the
/// base64 SHA-256 of its public key (what Chromium's spki list takes).
fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (certificate, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&certificate)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (scripts/test installs it)");
    assert!(made.success(), "openssl made no certificate");
    let pipeline = format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | base64",
        certificate.display()
    );
    let hash = Command::new("sh")
        .args(["-c", &pipeline])
        .output()
        .expect("openssl hashes the key");
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(!hash.is_empty(), "no key hash from openssl");
    (certificate, key, hash)
}
