//! Brokers that require SASL or TLS: tansu started with `--authentication`
//! and users created first, a throwaway PKI, and a TLS-terminating proxy in
//! front of tansu.
//!
//! tansu 0.6.0 accepts `--cert`/`--key` but serves plaintext whatever they
//! say (its listener never wraps connections in TLS, and clap refuses the two
//! flags together), so TLS is terminated by [`TlsProxy`]: a real TLS server
//! (OpenSSL) that forwards the decrypted stream to tansu, which advertises the
//! proxy's port in its metadata so clients only ever connect through TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVerifyMode};
use openssl::symm::Cipher;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

use crate::common::{free_port, spawn_tansu_on_released_port, spawn_tansu_with, tansu_binary};

/// A certificate authority: its certificate and key.
pub(crate) struct Ca {
    pub(crate) cert: X509,
    key: PKey<Private>,
}

fn new_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("pkey")
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut n = BigNum::new().expect("bignum");
    n.rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("random serial");
    n.to_asn1_integer().expect("serial")
}

fn name(cn: &str) -> openssl::x509::X509Name {
    let mut b = X509NameBuilder::new().expect("name");
    b.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    b.build()
}

impl Ca {
    /// A new self-signed CA valid for a day.
    pub(crate) fn new(cn: &str) -> Ca {
        let key = new_key();
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("v3");
        b.set_serial_number(&serial()).expect("serial");
        b.set_subject_name(&name(cn)).expect("subject");
        b.set_issuer_name(&name(cn)).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        b.set_not_after(&Asn1Time::days_from_now(1).expect("tomorrow"))
            .expect("not after");
        b.append_extension(BasicConstraints::new().critical().ca().build().expect("bc"))
            .expect("bc");
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku"),
        )
        .expect("ku");
        b.sign(&key, MessageDigest::sha256()).expect("sign");
        Ca {
            cert: b.build(),
            key,
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by this CA, for a
    /// server (`client` false) or a client.
    pub(crate) fn issue(&self, cn: &str, client: bool) -> (X509, PKey<Private>) {
        self.issue_for(cn, &["localhost"], &["127.0.0.1"], client)
    }

    /// A certificate naming `hosts` and `ips`, signed by this CA.
    pub(crate) fn issue_for(
        &self,
        cn: &str,
        hosts: &[&str],
        ips: &[&str],
        client: bool,
    ) -> (X509, PKey<Private>) {
        let key = new_key();
        let mut b = X509::builder().expect("x509");
        b.set_version(2).expect("v3");
        b.set_serial_number(&serial()).expect("serial");
        b.set_subject_name(&name(cn)).expect("subject");
        b.set_issuer_name(self.cert.subject_name()).expect("issuer");
        b.set_pubkey(&key).expect("pubkey");
        b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
            .expect("not before");
        b.set_not_after(&Asn1Time::days_from_now(1).expect("tomorrow"))
            .expect("not after");
        let mut san = SubjectAlternativeName::new();
        for h in hosts {
            san.dns(h);
        }
        for ip in ips {
            san.ip(ip);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .expect("san");
        b.append_extension(san).expect("san");
        let mut eku = ExtendedKeyUsage::new();
        if client {
            eku.client_auth();
        } else {
            eku.server_auth();
        }
        b.append_extension(eku.build().expect("eku")).expect("eku");
        b.sign(&self.key, MessageDigest::sha256()).expect("sign");
        (b.build(), key)
    }

    /// Writes the CA certificate as PEM to `path`.
    pub(crate) fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.cert.to_pem().expect("pem")).expect("write CA");
        path.to_owned()
    }
}

/// Writes a certificate and its key as PEM files in `dir`; the key is
/// encrypted (PKCS#8, AES-256) when `password` is given.
pub(crate) fn write_pair(
    dir: &Path,
    stem: &str,
    (cert, key): &(X509, PKey<Private>),
    password: Option<&str>,
) -> (PathBuf, PathBuf) {
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.to_pem().expect("pem")).expect("write cert");
    let key_pem = match password {
        Some(p) => key
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), p.as_bytes())
            .expect("encrypted key"),
        None => key.private_key_to_pem_pkcs8().expect("key"),
    };
    std::fs::write(&key_path, key_pem).expect("write key");
    (cert_path, key_path)
}

/// A TLS server on a loopback port that forwards every connection, once the
/// handshake succeeded, to `upstream`. Runs on its own thread and runtime;
/// stops when dropped.
pub(crate) struct TlsProxy {
    /// Handshakes that succeeded and failed so far.
    pub(crate) accepted: Arc<AtomicU64>,
    pub(crate) refused: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// Serves `cert`/`key` on `port`; with `client_ca`, requires a client
    /// certificate signed by it (mutual TLS).
    pub(crate) fn start(
        port: u16,
        upstream: SocketAddr,
        cert: &X509,
        key: &PKey<Private>,
        client_ca: Option<&X509>,
    ) -> TlsProxy {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
        b.set_certificate(cert).expect("cert");
        b.set_private_key(key).expect("key");
        if let Some(ca) = client_ca {
            let mut store = openssl::x509::store::X509StoreBuilder::new().expect("store");
            store.add_cert(ca.clone()).expect("client CA");
            b.set_verify_cert_store(store.build())
                .expect("verify store");
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = b.build();
        let std_listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the TLS proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let accepted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (a, r) = (accepted.clone(), refused.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stopped => return,
                        conn = listener.accept() => match conn {
                            Ok(c) => c,
                            Err(_) => continue,
                        },
                    };
                    let ssl = Ssl::new(acceptor.context()).expect("ssl");
                    let (a, r) = (a.clone(), r.clone());
                    tokio::spawn(async move {
                        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
                        if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                            r.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        a.fetch_add(1, Ordering::SeqCst);
                        let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                    });
                }
            });
        });
        TlsProxy {
            accepted,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The PKI of one test: a CA, the broker's certificate, and files.
pub(crate) struct Pki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: Ca,
    pub(crate) ca_file: PathBuf,
    pub(crate) server: (X509, PKey<Private>),
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("choreo test CA");
        let ca_file = ca.write(&dir.path().join("ca.pem"));
        let server = ca.issue("localhost", false);
        Pki {
            dir,
            ca,
            ca_file,
            server,
        }
    }
}

/// How a [`SecureTansu`] is locked down.
#[derive(Default)]
pub(crate) struct Security<'a> {
    /// SCRAM-SHA-512 users (name, password) to create; with any, the broker
    /// runs with `--authentication`.
    pub(crate) users: &'a [(&'a str, &'a str)],
    /// Serve TLS (through the proxy) with this PKI's server certificate.
    pub(crate) tls: Option<&'a Pki>,
    /// Require client certificates signed by the PKI's CA.
    pub(crate) mutual_tls: bool,
}

/// tansu locked down as asked; killed when dropped.
pub(crate) struct SecureTansu {
    child: Option<Child>,
    /// tansu's storage and log, removed when dropped.
    _dir: tempfile::TempDir,
    /// What clients connect to (the proxy with TLS).
    pub(crate) brokers: String,
    /// tansu's own (plaintext) address.
    pub(crate) upstream: SocketAddr,
    pub(crate) proxy: Option<TlsProxy>,
}

impl SecureTansu {
    pub(crate) fn start(security: Security<'_>) -> SecureTansu {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let front = if security.tls.is_some() {
            free_port()
        } else {
            port
        };
        if !security.users.is_empty() {
            // Users are created through a broker that does not require
            // authentication yet, on the storage the locked one then uses.
            let mut open = spawn_tansu_with(dir.path(), port, port, &[]).expect("tansu");
            for (user, password) in security.users {
                let out = Command::new(tansu_binary())
                    .args(["user", "create", user, password, "--broker"])
                    .arg(format!("tcp://127.0.0.1:{port}"))
                    .args(["--mechanism", "scram512"])
                    .output()
                    .expect("tansu user create");
                assert!(
                    out.status.success(),
                    "tansu user create {user}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let _ = open.kill();
            let _ = open.wait();
        }
        let extra: &[&str] = if security.users.is_empty() {
            &[]
        } else {
            &["--authentication"]
        };
        // The same port as the broker that created the users, killed just now.
        let child = spawn_tansu_on_released_port(dir.path(), port, front, extra);
        let proxy = security.tls.map(|pki| {
            TlsProxy::start(
                front,
                SocketAddr::from(([127, 0, 0, 1], port)),
                &pki.server.0,
                &pki.server.1,
                security.mutual_tls.then_some(&pki.ca.cert),
            )
        });
        SecureTansu {
            child: Some(child),
            _dir: dir,
            brokers: format!("127.0.0.1:{front}"),
            upstream: SocketAddr::from(([127, 0, 0, 1], port)),
            proxy,
        }
    }
}

impl Drop for SecureTansu {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every error of the chain, outermost first, joined by " / ".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(" / ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// Publishes an event and reads it back, id and payload, through `group`.
pub(crate) async fn round_trip(bus: &choreo_kafka::KafkaBus, group: &str, topic: &str) {
    use choreo_core::{Bus, Envelope, SubscribeOptions, Subscription};
    let mut sub = bus
        .subscribe(SubscribeOptions::new(group, [topic]))
        .await
        .expect("subscribe");
    let sent = Envelope::new("OrderPlaced", topic, r#"{"order_id":1}"#);
    bus.publish(sent.clone()).await.expect("publish");
    let d = choreo_testkit::recv(&mut sub, "the published event", Duration::from_secs(30)).await;
    assert_eq!(d.envelope().id, sent.id);
    assert_eq!(&d.envelope().data[..], &sent.data[..]);
    d.ack();
    sub.close().await.expect("close");
}
