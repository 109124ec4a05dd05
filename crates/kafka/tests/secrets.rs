//! Secrets never leave the crate: with a SASL password, a TLS key password
//! and raw librdkafka options whose names look secret configured, and
//! librdkafka's own debug logging on, none of them appears in the config's
//! `Debug`, in any error's `Display` or `Debug` (wrong password, unreachable
//! broker, wrong key password, unknown option, malformed environment), nor in
//! anything logged through `tracing` — librdkafka's log lines and client
//! errors included, which the crate forwards to `tracing` from librdkafka's
//! own threads (hence a global subscriber, installed before any client).

// Only some of the helpers: the others serve the tests of `tests/it`.
#[allow(dead_code)]
#[path = "it/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_kafka::{KafkaBus, KafkaConfig, SaslConfig, SaslMechanism, Secret, TlsConfig};
use common::secure::{Pki, SecureTansu, Security, write_pair};

const SASL_PASSWORD: &str = "sasl-S3CRET-e1f0";
const KEY_PASSWORD: &str = "tls-S3CRET-7a21";
const CLIENT_SECRET: &str = "keystore-S3CRET-93bc";
const API_TOKEN: &str = "token-S3CRET-5d08";
const SECRETS: [&str; 4] = [SASL_PASSWORD, KEY_PASSWORD, CLIENT_SECRET, API_TOKEN];

/// Everything logged through `tracing` in this process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The process-wide capturing subscriber, at DEBUG: librdkafka's clients
/// take their log level from it when they are created.
fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        logs
    })
}

/// A config with every kind of secret, librdkafka's debug logging on, and
/// short timeouts.
fn secret_config(brokers: &str) -> KafkaConfig {
    common::config(brokers)
        .admin_timeout(Duration::from_secs(4))
        .join_timeout(Duration::from_secs(8))
        .sasl(SaslConfig::new(
            SaslMechanism::ScramSha512,
            "orders-svc",
            SASL_PASSWORD,
        ))
        .set("ssl.keystore.password", CLIENT_SECRET)
        .set("debug", "generic,broker,security,conf,protocol")
}

/// Asserts no secret is in `what`.
fn assert_clean(label: &str, what: &str) {
    for s in SECRETS {
        assert!(!what.contains(s), "{label} shows a secret ({s}): {what}");
    }
}

fn assert_error_clean(label: &str, err: &(dyn std::error::Error + 'static)) {
    eprintln!("{label}: {err}");
    assert_clean(label, &format!("{err} {err:?}"));
    let mut source = err.source();
    while let Some(e) = source {
        assert_clean(label, &format!("{e} {e:?}"));
        source = e.source();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_leaks_no_secret() {
    let logs = captured();
    let broker = SecureTansu::start(Security {
        users: &[("orders-svc", "the-real-password")],
        ..Security::default()
    });
    let config = secret_config(&broker.brokers);
    assert_clean("Debug of the config", &format!("{config:?}"));
    let bus = KafkaBus::new(config).unwrap();
    assert_clean("Debug of the bus", &format!("{bus:?}"));
    let err = bus
        .publish(Envelope::new("OrderPlaced", "secret-orders", "{}"))
        .await
        .expect_err("wrong password");
    assert!(err.to_string().contains("SASL SCRAM-SHA-512"), "{err}");
    assert_error_clean("publish with a wrong password", &err);
    let err = bus
        .subscribe(SubscribeOptions::new("g", ["secret-orders"]))
        .await
        .expect_err("wrong password");
    assert_error_clean("subscribe with a wrong password", &err);

    let text = logs.text();
    // The capture works: librdkafka's failure and its configuration dump
    // (debug context `conf`, where librdkafka itself masks sensitive
    // properties) are in it.
    assert!(
        text.contains("choreo_kafka::librdkafka")
            && text.contains("SASL authentication error")
            && text.contains("sasl.password = [redacted]"),
        "{text}"
    );
    assert_clean("the logs", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_over_tls_with_a_key_password_leaks_no_secret() {
    let logs = captured();
    let pki = Pki::new();
    let client = pki.ca.issue("orders-svc", true);
    let (cert, key) = write_pair(pki.dir.path(), "client", &client, Some(KEY_PASSWORD));
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let config = secret_config(&nowhere).tls(
        TlsConfig::new()
            .ca_location(&pki.ca_file)
            .certificate_location(&cert)
            .key_location(&key)
            .key_password(KEY_PASSWORD),
    );
    assert_clean("Debug of the config", &format!("{config:?}"));
    let bus = KafkaBus::new(config.clone()).unwrap();
    let err = bus
        .publish(Envelope::new("OrderPlaced", "secret-orders", "{}"))
        .await
        .expect_err("nothing listens there");
    assert_error_clean("publish to an unreachable broker", &err);

    // The wrong key password: the client cannot even be created.
    let mut wrong = config;
    wrong.tls.as_mut().unwrap().key_password = Some(Secret::new(API_TOKEN));
    let err = KafkaBus::new(wrong).expect_err("the key does not decrypt");
    assert_error_clean("a wrong key password", &err);

    assert_clean("the logs", &logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_option_or_variable_leaks_no_secret() {
    let logs = captured();
    // An option librdkafka does not know: its error repeats the value.
    let config = secret_config("127.0.0.1:9").set("my.api.token", API_TOKEN);
    assert_clean("Debug of the config", &format!("{config:?}"));
    let err = KafkaBus::new(config).expect_err("unknown option");
    assert!(err.to_string().contains("my.api.token"), "{err}");
    assert_error_clean("an unknown option", &err);

    // A raw option contradicting the typed password.
    let err = KafkaBus::new(secret_config("127.0.0.1:9").set("sasl.password", API_TOKEN))
        .expect_err("contradiction");
    assert_error_clean("a contradicting raw password", &err);

    // A malformed CHOREO_KAFKA_OPTIONS pair that holds a password.
    let err = KafkaConfig::from_vars([
        ("CHOREO_KAFKA_BROKERS", "127.0.0.1:9"),
        (
            "CHOREO_KAFKA_OPTIONS",
            &format!("sasl.password:{API_TOKEN}") as &str,
        ),
    ])
    .expect_err("not key=value");
    assert_error_clean("a malformed option variable", &err);

    assert_clean("the logs", &logs.text());
}
