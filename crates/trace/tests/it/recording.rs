//! `record`: a run on the bus written to a capture file, every record of
//! the topology's topics, their dead letters and the receipts.

use crate::helpers::*;
use choreo_bus::InProcessBus;
use choreo_core::{Bus, Envelope};
use choreo_trace::capture::Reader;
use choreo_trace::{Error, record};

#[tokio::test]
async fn a_recording_holds_what_was_published_to_the_topologys_topics_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let topology = order_fulfillment();
    for file in ["run.avro", "run.jsonl"] {
        let path = dir.path().join(file);
        let bus = InProcessBus::new();
        let recording = record(&bus, &topology, &path).await.unwrap();
        assert_eq!(recording.path(), path);
        let placed = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        let dead = Envelope::new("OrderPlaced", "orders.dlq", "{}").with_source("checkout");
        // Not a topic of the topology: not recorded.
        let other = Envelope::new("Audited", "audit", "{}");
        for e in [placed.clone(), dead.clone(), other] {
            bus.publish(e).await.unwrap();
        }
        bus.settled_within(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(recording.finish().await.unwrap(), 2, "{file}");
        let mut ids: Vec<_> = Reader::open(&path)
            .unwrap()
            .map(|r| r.unwrap().envelope.id)
            .collect();
        ids.sort();
        let mut want = vec![placed.id, dead.id];
        want.sort();
        assert_eq!(ids, want, "{file}");
    }
}

#[tokio::test]
async fn a_recording_to_a_file_that_cannot_be_created_says_which() {
    let bus = InProcessBus::new();
    let path = std::path::Path::new("/nonexistent-dir/run.avro");
    let err = record(&bus, &order_fulfillment(), path).await.unwrap_err();
    assert!(
        matches!(&err, Error::Io { path: p, .. } if p == path),
        "{err}"
    );
    assert!(
        err.to_string().contains("/nonexistent-dir/run.avro"),
        "{err}"
    );
}
