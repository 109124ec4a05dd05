//! TLS to the brokers with a throwaway CA: publish and subscribe work with
//! the CA configured (also with SASL SCRAM on top, and with a client
//! certificate whose key is encrypted); a certificate from another CA, a
//! host name the certificate does not name, and a plaintext client are
//! refused with a clear error.
//!
//! tansu 0.6.0 does not serve TLS itself (see `common/secure.rs`): a TLS
//! proxy (OpenSSL) in front of it terminates TLS, and tansu advertises the
//! proxy's port, so every connection of the client goes through TLS.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::secure::{Ca, Pki, SecureTansu, Security, error_chain, round_trip, write_pair};
use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_kafka::{KafkaBus, KafkaConfig, SaslConfig, SaslMechanism, Secret, TlsConfig};

fn tls_config(brokers: &str, ca: &std::path::Path) -> KafkaConfig {
    crate::common::config(brokers)
        .admin_timeout(Duration::from_secs(5))
        .join_timeout(Duration::from_secs(30))
        .tls(TlsConfig::new().ca_location(ca))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_configured_tls_publishes_and_subscribes() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        tls: Some(&pki),
        ..Security::default()
    });
    let bus = KafkaBus::new(tls_config(&broker.brokers, &pki.ca_file)).unwrap();
    round_trip(&bus, "tls-readers", "tls-orders").await;
    let proxy = broker.proxy.as_ref().unwrap();
    assert!(proxy.accepted.load(Ordering::SeqCst) > 0);
    assert_eq!(proxy.refused.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_publishes_and_subscribes() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        users: &[("billing", "Tls-and-Scram-1")],
        tls: Some(&pki),
        ..Security::default()
    });
    let config = tls_config(&broker.brokers, &pki.ca_file).sasl(SaslConfig::new(
        SaslMechanism::ScramSha512,
        "billing",
        "Tls-and-Scram-1",
    ));
    let bus = KafkaBus::new(config).unwrap();
    round_trip(&bus, "tls-readers", "tls-sasl-orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_an_encrypted_client_key_publishes_and_subscribes() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        tls: Some(&pki),
        mutual_tls: true,
        ..Security::default()
    });
    let key_password = "Key-Pa55phrase";
    let client = pki.ca.issue("orders-svc", true);
    let (cert, key) = write_pair(pki.dir.path(), "client", &client, Some(key_password));

    // Without a client certificate the proxy refuses the handshake.
    let bus = KafkaBus::new(tls_config(&broker.brokers, &pki.ca_file)).unwrap();
    let err = bus
        .publish(Envelope::new("OrderPlaced", "mtls-orders", "{}"))
        .await
        .expect_err("no client certificate");
    eprintln!("no client certificate: {}", error_chain(&err));
    assert!(error_chain(&err).contains("TLS connection to brokers"));

    let mut config = tls_config(&broker.brokers, &pki.ca_file);
    let tls = config.tls.as_mut().unwrap();
    tls.certificate_location = Some(cert);
    tls.key_location = Some(key);
    tls.key_password = Some(Secret::new(key_password));
    let bus = KafkaBus::new(config).unwrap();
    round_trip(&bus, "tls-readers", "mtls-orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_with_a_clear_error() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        tls: Some(&pki),
        ..Security::default()
    });
    let other = Ca::new("some other CA");
    let other_file = other.write(&pki.dir.path().join("other-ca.pem"));
    let bus = KafkaBus::new(tls_config(&broker.brokers, &other_file)).unwrap();
    let err = bus
        .publish(Envelope::new("OrderPlaced", "tls-untrusted", "{}"))
        .await
        .expect_err("a certificate from an untrusted CA must be refused");
    let chain = error_chain(&err);
    eprintln!("untrusted CA: {chain}");
    assert!(
        chain.contains(&format!("TLS connection to brokers '{}'", broker.brokers))
            && chain.contains("certificate verify failed")
            && chain.contains("`tls.ca_location`"),
        "{chain}"
    );
    let err = bus
        .subscribe(SubscribeOptions::new("untrusted", ["tls-untrusted"]))
        .await
        .expect_err("nor subscribe");
    assert!(error_chain(&err).contains("TLS connection to brokers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_is_refused_unless_host_verification_is_off() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        tls: Some(&pki),
        ..Security::default()
    });
    // A second TLS front whose certificate, from the trusted CA, names
    // another host only.
    let (cert, key) = pki
        .ca
        .issue_for("elsewhere.example", &["elsewhere.example"], &[], false);
    let port = crate::common::free_port();
    let other = crate::common::secure::TlsProxy::start(port, broker.upstream, &cert, &key, None);
    let brokers = format!("127.0.0.1:{port}");

    let bus = KafkaBus::new(tls_config(&brokers, &pki.ca_file)).unwrap();
    let err = bus
        .create_topic("tls-hostname", 1)
        .await
        .expect_err("the certificate names another host");
    let chain = error_chain(&err);
    eprintln!("wrong host name: {chain}");
    assert!(chain.contains("TLS connection to brokers"), "{chain}");

    let mut config = tls_config(&brokers, &pki.ca_file);
    config.tls.as_mut().unwrap().verify_hostname = false;
    let bus = KafkaBus::new(config).unwrap();
    bus.create_topic("tls-hostname", 1)
        .await
        .expect("without host name verification the CA is enough");
    assert!(other.accepted.load(Ordering::SeqCst) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_gets_nothing_from_a_tls_listener() {
    let pki = Pki::new();
    let broker = SecureTansu::start(Security {
        tls: Some(&pki),
        ..Security::default()
    });
    let config = crate::common::config(&broker.brokers).admin_timeout(Duration::from_secs(3));
    let bus = KafkaBus::new(config).unwrap();
    let err = bus
        .publish(Envelope::new("OrderPlaced", "tls-plain", "{}"))
        .await
        .expect_err("plaintext to a TLS listener");
    let chain = error_chain(&err);
    eprintln!("plaintext client: {chain}");
    assert!(
        chain.contains(&format!("on brokers '{}'", broker.brokers)),
        "{chain}"
    );
    assert!(
        broker
            .proxy
            .as_ref()
            .unwrap()
            .refused
            .load(Ordering::SeqCst)
            > 0
    );
}
