//! SASL against tansu started with `--authentication`: SCRAM-SHA-512 with the
//! right password publishes and subscribes end to end; a wrong password or
//! an unknown user fails with an error naming the mechanism and the user,
//! never the password; PLAIN, which tansu 0.6.0 does not offer, is refused
//! with the broker's list of mechanisms.

use std::time::Duration;

use crate::common::secure::{SecureTansu, Security, error_chain, round_trip};
use choreo_core::{Bus, Envelope, SubscribeOptions};
use choreo_kafka::{KafkaBus, KafkaConfig, SaslConfig, SaslMechanism};

const USER: &str = "orders-svc";
const PASSWORD: &str = "Corr3ct-Horse-Battery";

fn sasl(brokers: &str, mechanism: SaslMechanism, user: &str, password: &str) -> KafkaConfig {
    crate::common::config(brokers)
        .admin_timeout(Duration::from_secs(5))
        .join_timeout(Duration::from_secs(30))
        .sasl(SaslConfig::new(mechanism, user, password))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_with_the_right_password_publishes_and_subscribes() {
    let broker = SecureTansu::start(Security {
        users: &[(USER, PASSWORD)],
        ..Security::default()
    });
    let bus = KafkaBus::new(sasl(
        &broker.brokers,
        SaslMechanism::ScramSha512,
        USER,
        PASSWORD,
    ))
    .unwrap();
    round_trip(&bus, "secure-readers", "sasl-orders").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_fails_naming_mechanism_and_user_never_the_password() {
    let broker = SecureTansu::start(Security {
        users: &[(USER, PASSWORD)],
        ..Security::default()
    });
    let wrong = "Wr0ng-Pa55word-42";
    for (user, password) in [(USER, wrong), ("nobody", PASSWORD)] {
        let bus = KafkaBus::new(sasl(
            &broker.brokers,
            SaslMechanism::ScramSha512,
            user,
            password,
        ))
        .unwrap();
        let err = bus
            .publish(Envelope::new("OrderPlaced", "sasl-denied", "{}"))
            .await
            .expect_err("a wrong password must not publish");
        let shown = format!("{err:#} / {err:?}");
        let chain = error_chain(&err);
        eprintln!("publish as '{user}' with a wrong password: {chain}");
        assert!(
            chain.contains("SASL SCRAM-SHA-512 authentication")
                && chain.contains(&format!("user '{user}'")),
            "{chain}"
        );
        assert!(
            !shown.contains(password) && !chain.contains(password),
            "{shown}"
        );

        let err = bus
            .subscribe(SubscribeOptions::new("denied", ["sasl-denied"]))
            .await
            .expect_err("a wrong password must not subscribe");
        let chain = error_chain(&err);
        assert!(
            chain.contains("SCRAM-SHA-512") && chain.contains(user),
            "{chain}"
        );
        assert!(!chain.contains(password) && !format!("{err:?}").contains(password));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_is_not_offered_by_tansu_and_the_error_says_so() {
    let broker = SecureTansu::start(Security {
        users: &[(USER, PASSWORD)],
        ..Security::default()
    });
    let bus = KafkaBus::new(sasl(&broker.brokers, SaslMechanism::Plain, USER, PASSWORD)).unwrap();
    let err = bus
        .publish(Envelope::new("OrderPlaced", "sasl-plain", "{}"))
        .await
        .expect_err("tansu 0.6.0 offers no PLAIN");
    let chain = error_chain(&err);
    eprintln!("PLAIN: {chain}");
    assert!(
        chain.contains("SASL PLAIN authentication") && chain.contains(USER),
        "{chain}"
    );
    assert!(!chain.contains(PASSWORD), "{chain}");
}
