//! A tracer group's checkpoints: one the group refuses is committed again as
//! it was, with the positions of its time, not those read since (they were
//! not acted on as of its clock).

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use choreo_core::Bus;
use choreo_core::Envelope;
use choreo_kafka::{KafkaConfig, LookbackEvent, LookbackOptions, LookbackReader, ReadFrom, Topics};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tokio::select;

const TOPIC: &str = "flows";

async fn publish(mock: &Mock, from: usize, n: usize) {
    for i in from..from + n {
        let mut env = Envelope::new("OrderPlaced", TOPIC, "{}");
        env.key = Some(Bytes::from(format!("k{i}")));
        mock.bus.publish(env).await.unwrap();
    }
}

/// Reads until `n` records came (and the reader said it is ready, when it
/// has not yet).
async fn read(reader: &mut LookbackReader, n: usize, ready_before: bool) {
    let mut read = 0;
    let mut ready = ready_before;
    tokio::time::timeout(Duration::from_secs(60), async {
        while read < n || !ready {
            match reader.next().await {
                Some(Ok(LookbackEvent::Record { .. })) => read += 1,
                Some(Ok(LookbackEvent::Ready { .. })) => ready = true,
                Some(Ok(_)) => {}
                other => panic!("reading: {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("read {read} of {n} (ready: {ready})"));
}

/// Each partition's committed offset in `group`.
fn committed(brokers: &str, group: &str) -> Vec<Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    tpl.add_partition(TOPIC, 1);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements().iter().map(|e| e.offset()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_checkpoint_is_committed_again_as_it_was() {
    let (mock, _, mut reader) = a_reader_past(12).await;
    reader
        .checkpoint_again()
        .expect("nothing refused: nothing to do");
    reader
        .checkpoint(100)
        .expect("the group takes the first checkpoint");
    let first = committed(&mock.brokers(), "tracers");
    assert_eq!(
        first.iter().map(|o| o.to_raw().unwrap()).sum::<i64>(),
        12,
        "{first:?}"
    );
    publish(&mock, 12, 6).await;
    read(&mut reader, 6, true).await;
    // Refused, as while the group rebalances.
    mock.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    );
    assert!(reader.checkpoint(200).is_err(), "the injected refusal");
    let refused_at = committed(&mock.brokers(), "tracers");
    assert_eq!(refused_at, first, "nothing committed");
    // Read on: the positions move past what was acted on as of 200.
    publish(&mock, 18, 5).await;
    read(&mut reader, 5, true).await;
    reader.checkpoint_again().expect("taken now");
    let again = committed(&mock.brokers(), "tracers");
    assert_eq!(
        again.iter().map(|o| o.to_raw().unwrap()).sum::<i64>(),
        18,
        "the positions of the refused checkpoint, not those read since: {again:?}"
    );
    let clocks = committed(&mock.brokers(), "tracers.choreo-clock");
    assert_eq!(clocks, vec![Offset::Offset(200); 2], "its clock");
    // Taken: nothing more to commit again.
    reader.checkpoint(300).unwrap();
    reader.checkpoint_again().unwrap();
    let last = committed(&mock.brokers(), "tracers");
    assert_eq!(last.iter().map(|o| o.to_raw().unwrap()).sum::<i64>(), 23);
    assert_eq!(
        committed(&mock.brokers(), "tracers.choreo-clock"),
        vec![Offset::Offset(300); 2]
    );
}

fn options() -> LookbackOptions {
    LookbackOptions::new(Topics::names([TOPIC]), "tracers").from(ReadFrom::Beginning)
}

/// A mock cluster with `n` records on two partitions, its configuration, and
/// a reader of the group that has read them all and is ready.
async fn a_reader_past(n: usize) -> (Mock, KafkaConfig, LookbackReader) {
    let mock = Mock::start(1);
    mock.topic(TOPIC, 2).await;
    publish(&mock, 0, n).await;
    let config = config(&mock.brokers());
    let mut reader = LookbackReader::open(&config, options()).await.unwrap();
    read(&mut reader, n, false).await;
    (mock, config, reader)
}

/// The group takes the position and refuses the clock: the pair committed is
/// the new position with the old clock (the next owner may repeat itself,
/// never skip), and the clock is committed again later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_half_taken_is_completed_later() {
    let (mock, _, mut reader) = a_reader_past(10).await;
    reader.checkpoint(100).unwrap();
    publish(&mock, 10, 4).await;
    read(&mut reader, 4, true).await;
    // The position's commit is taken, the clock's refused.
    mock.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
        ],
    );
    assert!(reader.checkpoint(200).is_err());
    let sum = |v: Vec<Offset>| v.iter().map(|o| o.to_raw().unwrap()).sum::<i64>();
    assert_eq!(sum(committed(&mock.brokers(), "tracers")), 14);
    assert_eq!(
        committed(&mock.brokers(), "tracers.choreo-clock"),
        vec![Offset::Offset(100); 2],
        "the old clock with the new position"
    );
    reader.checkpoint_again().unwrap();
    assert_eq!(
        committed(&mock.brokers(), "tracers.choreo-clock"),
        vec![Offset::Offset(200); 2]
    );
}

/// A refused checkpoint is dropped at the next assignment: committed again
/// after it, it could rewind a partition that came back restored from
/// another member's later checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_drops_a_refused_checkpoint() {
    let (mock, config, mut a) = a_reader_past(10).await;
    a.checkpoint(100).unwrap();
    mock.cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    );
    assert!(a.checkpoint(200).is_err());
    // A second member joins: `a` is given its partitions anew.
    let mut b = LookbackReader::open(&config, options()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let (mut a_assigned, mut b_assigned) = (false, false);
        while !(a_assigned && b_assigned) {
            select! {
                ev = a.next() => match ev {
                    Some(Ok(LookbackEvent::Assigned { .. })) => a_assigned = true,
                    Some(Ok(_)) => {}
                    other => panic!("the first member: {other:?}"),
                },
                ev = b.next() => match ev {
                    Some(Ok(LookbackEvent::Assigned { .. })) => b_assigned = true,
                    Some(Ok(_)) => {}
                    other => panic!("the second member: {other:?}"),
                },
            }
        }
    })
    .await
    .expect("both members were assigned partitions");
    assert_eq!(a.assignment().len(), 1, "one partition each");
    a.checkpoint_again().unwrap();
    assert_eq!(
        committed(&mock.brokers(), "tracers.choreo-clock"),
        vec![Offset::Offset(100); 2],
        "nothing committed again after the assignment"
    );
}
