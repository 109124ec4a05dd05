//! The record reader for tools: named topics or a pattern, from the
//! beginning to the end or following, without a group or as one.

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use choreo_core::{Bus, Envelope};
use choreo_kafka::{ReadFrom, ReaderOptions, RecordReader, Topics};

async fn publish(bus: &choreo_kafka::KafkaBus, topic: &str, n: u64) {
    for i in 0..n {
        let mut env = Envelope::new("Tick", topic.to_owned(), format!("{{\"n\":{i}}}"));
        env.key = Some(Bytes::from(format!("k{i}")));
        bus.publish(env).await.unwrap();
    }
}

async fn read_all(reader: &mut RecordReader) -> Vec<choreo_kafka::ReadRecord> {
    let mut out = Vec::new();
    let all = async {
        while let Some(r) = reader.next().await {
            out.push(r.expect("a record"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the reader stops at the end");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_named_topics_or_a_pattern_to_the_end() {
    let mock = Mock::start(1);
    for (t, p) in [("t1", 2), ("t2", 1), ("other", 1)] {
        mock.topic(t, p).await;
    }
    publish(&mock.bus, "t1", 5).await;
    publish(&mock.bus, "t2", 3).await;
    publish(&mock.bus, "other", 4).await;
    let config = config(&mock.brokers());

    let mut named = RecordReader::open(&config, ReaderOptions::new(Topics::names(["t1"])))
        .await
        .unwrap();
    let got = read_all(&mut named).await;
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|r| r.envelope.topic == "t1"));
    assert!(got.iter().all(|r| r.envelope.event_type == "Tick"));

    let mut pattern = RecordReader::open(&config, ReaderOptions::new(Topics::pattern("t[0-9]")))
        .await
        .unwrap();
    let got = read_all(&mut pattern).await;
    assert_eq!(got.len(), 8);
    let mut positions: Vec<(String, i32, i64)> = got
        .iter()
        .map(|r| (r.envelope.topic.to_string(), r.partition, r.offset))
        .collect();
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 8, "each record once, with its position");

    let err = RecordReader::open(&config, ReaderOptions::new(Topics::names(["missing"])))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topic 'missing'") && err.contains("does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_from_the_end_reads_only_new_records() {
    let mock = Mock::start(1);
    mock.topic("live", 2).await;
    publish(&mock.bus, "live", 3).await;
    let options = ReaderOptions::new(Topics::names(["live"]))
        .from(ReadFrom::End)
        .follow();
    let mut reader = RecordReader::open(&config(&mock.brokers()), options)
        .await
        .unwrap();
    let bus = mock.bus.clone();
    let new = Envelope::new("Late", "live", "{}");
    let id = new.id.clone();
    // Published once the reader is positioned (after `open`).
    tokio::spawn(async move { bus.publish(new).await.unwrap() });
    let r = tokio::time::timeout(Duration::from_secs(60), reader.next())
        .await
        .expect("a new record")
        .expect("not the end")
        .expect("a record");
    assert_eq!(r.envelope.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_reader_resumes_where_the_group_left_off() {
    let mock = Mock::start(1);
    mock.topic("audit", 1).await;
    publish(&mock.bus, "audit", 4).await;
    let config = config(&mock.brokers());
    let options = || ReaderOptions::new(Topics::names(["audit"])).group("tracer");
    let mut first = RecordReader::open(&config, options()).await.unwrap();
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(60), first.next())
            .await
            .expect("a record")
            .unwrap()
            .unwrap();
    }
    // Closing marks the fourth as read, commits and leaves.
    first.close().await.unwrap();

    publish(&mock.bus, "audit", 1).await;
    let mut second = RecordReader::open(&config, options()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), second.next())
        .await
        .expect("a record")
        .unwrap()
        .unwrap();
    assert_eq!(r.offset, 4, "the group resumes after what it read");
}

/// The next record of `reader` that is on `topic`, within 120 s.
async fn next_on(reader: &mut RecordReader, topic: &str) -> choreo_kafka::ReadRecord {
    let found = async {
        loop {
            let r = reader.next().await.expect("following").expect("a record");
            if r.envelope.topic == topic {
                return r;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), found)
        .await
        .unwrap_or_else(|_| panic!("no record on '{topic}' within 120 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_topics_are_read_where_they_exist_and_picked_up_once_created() {
    let tansu = Tansu::start().await;
    tansu.topic("present", 1).await;
    publish(&tansu.bus, "present", 2).await;
    let config = config(&tansu.brokers());
    let topics = || Topics::optional(["present", "later.dlq"]);

    // To the end: what exists, and a word on what does not.
    let mut batch = RecordReader::open(&config, ReaderOptions::new(topics()))
        .await
        .unwrap();
    assert_eq!(batch.absent(), vec!["later.dlq".to_owned()]);
    assert_eq!(read_all(&mut batch).await.len(), 2);

    // Following, alone and as a group member: the missing topic is read
    // from its beginning once it exists.
    let alone = ReaderOptions {
        refresh: Duration::from_millis(500),
        ..ReaderOptions::new(topics()).follow()
    };
    let mut alone = RecordReader::open(&config, alone).await.unwrap();
    let mut member = RecordReader::open(&config, ReaderOptions::new(topics()).group("fresh"))
        .await
        .unwrap();
    for reader in [&mut alone, &mut member] {
        next_on(reader, "present").await;
        next_on(reader, "present").await;
    }
    publish(&tansu.bus, "later.dlq", 1).await;
    for reader in [&mut alone, &mut member] {
        let r = next_on(reader, "later.dlq").await;
        assert_eq!(r.offset, 0);
    }
    assert!(alone.absent().is_empty());
    member.close().await.unwrap();
}
