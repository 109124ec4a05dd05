//! The bus conformance suite on `OutboxBus`: every event published goes
//! through an outbox row and the relay before a subscriber sees it, so every
//! envelope check of the suite (ids, correlation, causation, trace context,
//! headers, binary payloads, order per key, no loss) holds for
//! outbox-published events.

use choreo_bus::InProcessBus;
use choreo_postgres::{OutboxBus, PgStore};
use choreo_testkit::conformance::{Features, Harness};
use choreo_testkit::postgres::Postgres;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::common::quick_relay;

struct Outbox {
    bus: OutboxBus<InProcessBus>,
    _relay: DropGuard,
    _pg: Postgres,
}

impl Outbox {
    async fn start() -> Outbox {
        let pg = Postgres::start();
        let metrics = choreo_postgres::PgMetrics::new(&prometheus::Registry::new()).unwrap();
        let store =
            PgStore::connect(choreo_postgres::PgConfig::new(pg.url("postgres")).metrics(metrics))
                .await
                .expect("connect");
        let inner = InProcessBus::new();
        let shutdown = CancellationToken::new();
        store
            .relay(&inner)
            .config(quick_relay())
            .start(shutdown.clone());
        Outbox {
            bus: OutboxBus::new(store, inner),
            _relay: shutdown.drop_guard(),
            _pg: pg,
        }
    }
}

impl Harness for Outbox {
    type Bus = OutboxBus<InProcessBus>;

    fn bus(&self) -> Self::Bus {
        self.bus.clone()
    }

    async fn create_topic(&self, name: &str, partitions: u32) {
        self.bus.inner().create_topic(name, partitions);
    }

    fn features(&self) -> Features {
        Features {
            added_headers: &[choreo_core::RELAYED_AT_HEADER],
            ..Features::default()
        }
    }
}

// Every case but `latest_skips_earlier_events`: a group starting at the
// latest position starts at the end of the bus's log, and an outbox publish
// returns at its commit, before the relay appends the event to that log — so
// a group that subscribes in between sees it. That is when the event reaches
// the bus, not what reaches it.
choreo_testkit::conformance_suite!(@cases Outbox::start;
    round_trip_keeps_every_field,
    each_group_gets_every_event,
    members_of_a_group_split_partitions,
    order_is_kept_per_key,
    redelivers_what_was_given_back,
    dead_letter_keeps_the_event_and_says_why,
    unsettled_deliveries_go_to_the_next_member,
    concurrent_publishers_and_consumers_lose_nothing,
    graceful_shutdown_mid_stream_loses_nothing,
);
