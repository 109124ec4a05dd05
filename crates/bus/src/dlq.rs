//! Dead letters: reading them, filtering them, and replaying them safely.
//!
//! A dead-letter copy is the original event — same id, flow, causation and
//! payload — with `choreo-dlq-*` headers saying why, how many attempts, where
//! it came from and which service gave up. [`DeadLettered`] reads those back;
//! [`replay`] publishes events back to their original topic.
//!
//! A replayed event keeps its id, correlation id and causation id, so
//! idempotency still recognises it (services that handled it before skip it)
//! and the tracer places it in its flow; it carries the header
//! `choreo-replay-count`, one more than the copy it came from. If it fails
//! again it goes back to the dead-letter topic like any other event, with its
//! count: nothing replays automatically, so nothing loops. [`replay`] refuses
//! events replayed [`ReplayOptions::max_replays`] times already.

use std::collections::BTreeMap;

use choreo_core::{Bus, Envelope, EventId, Name, Timestamp, dlq_headers};
use serde::Serialize;

use crate::{Error, Result};

/// A dead-lettered event and why it was dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLettered {
    /// The event as it was dead-lettered (on the dead-letter topic).
    #[serde(skip)]
    pub envelope: Envelope,
    /// Its id.
    pub id: EventId,
    /// Its type.
    pub event_type: String,
    /// Its flow.
    pub correlation_id: EventId,
    /// Why (`choreo-dlq-reason`).
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// The topic it was read from, where a replay sends it.
    pub topic: String,
    /// The partition it was read from.
    pub partition: Option<u32>,
    /// Its offset there.
    pub offset: Option<u64>,
    /// The service that gave up.
    pub service: String,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<Timestamp>,
    /// How many times it had been replayed before this copy was made.
    pub replays: u32,
    /// The dead-letter topic it is on.
    pub dlq_topic: String,
}

impl DeadLettered {
    /// Reads a dead-letter copy; `None` for an envelope without a dead-letter reason.
    pub fn from_envelope(envelope: Envelope) -> Option<DeadLettered> {
        let h = &envelope.headers;
        let reason = h.get_str(dlq_headers::REASON)?.to_owned();
        let num = |name: &str| h.get_str(name).and_then(|v| v.trim().parse::<u64>().ok());
        let topic = h
            .get_str(dlq_headers::TOPIC)
            .map(str::to_owned)
            .unwrap_or_else(|| {
                envelope
                    .topic
                    .strip_suffix(".dlq")
                    .unwrap_or(&envelope.topic)
                    .to_owned()
            });
        Some(DeadLettered {
            id: envelope.id.clone(),
            event_type: envelope.event_type.to_string(),
            correlation_id: envelope.correlation_id.clone(),
            reason,
            attempts: num(dlq_headers::ATTEMPTS).unwrap_or(0) as u32,
            topic,
            partition: num(dlq_headers::PARTITION).map(|p| p as u32),
            offset: num(dlq_headers::OFFSET),
            service: h.get_str(dlq_headers::SERVICE).unwrap_or("").to_owned(),
            dead_lettered_at: h
                .get_str(dlq_headers::TIME)
                .and_then(Timestamp::parse_rfc3339),
            replays: num(dlq_headers::REPLAYS).unwrap_or(0) as u32,
            dlq_topic: envelope.topic.to_string(),
            envelope,
        })
    }

    /// The reason without the details that differ per event (attempt
    /// counts, ids): what `list` groups by.
    pub fn reason_kind(&self) -> String {
        let r = self.reason.as_str();
        // "handler failed after 3 attempts: boom" → "handler failed: boom";
        // "decode error: payload of 'X' is not valid …: expected …" → up to the first colon after the prefix.
        let without_counts = match (r.find(" after "), r.find(": ")) {
            (Some(a), Some(c)) if a < c => format!("{}{}", &r[..a], &r[c..]),
            _ => r.to_owned(),
        };
        let mut cut = without_counts.as_str();
        if let Some(i) = cut.find(" at line ") {
            cut = &cut[..i];
        }
        cut.to_owned()
    }

    /// The event to publish for a replay: the original event on its original
    /// topic, same id, flow, causation, key, time and payload, without the
    /// dead-letter headers, with `choreo-replay-count` one higher.
    pub fn replay_envelope(&self) -> Envelope {
        let mut env = self.envelope.clone();
        env.topic = Name::from(self.topic.as_str());
        for h in dlq_headers::ALL {
            env.headers.remove(h);
        }
        env.headers
            .insert(dlq_headers::REPLAYS, (self.replays + 1).to_string());
        env
    }
}

/// Which dead letters a command applies to. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Dead-lettered by this service.
    pub service: Option<String>,
    /// Of this event type.
    pub event_type: Option<String>,
    /// Whose reason contains this text.
    pub reason: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<Timestamp>,
    /// Dead-lettered before this time.
    pub until: Option<Timestamp>,
    /// With one of these ids (empty: any).
    pub ids: Vec<EventId>,
}

impl Filter {
    /// Whether `d` matches.
    pub fn matches(&self, d: &DeadLettered) -> bool {
        self.service.as_ref().is_none_or(|s| *s == d.service)
            && self.event_type.as_ref().is_none_or(|t| *t == d.event_type)
            && self
                .reason
                .as_ref()
                .is_none_or(|r| d.reason.contains(r.as_str()))
            && self
                .since
                .is_none_or(|t| d.dead_lettered_at.is_some_and(|at| at >= t))
            && self
                .until
                .is_none_or(|t| d.dead_lettered_at.is_some_and(|at| at < t))
            && (self.ids.is_empty() || self.ids.contains(&d.id))
    }
}

/// Dead letters counted by reason (as [`DeadLettered::reason_kind`]), most first.
pub fn by_reason(items: &[DeadLettered]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for d in items {
        *counts.entry(d.reason_kind()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// How [`replay`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Only report what would be replayed.
    pub dry_run: bool,
    /// Refuse events already replayed this many times. Default 3.
    pub max_replays: u32,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            dry_run: false,
            max_replays: 3,
        }
    }
}

/// What happened to one event in a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Replayed {
    /// Published back to its topic (or would be, in a dry run).
    Published {
        /// The event.
        id: EventId,
        /// Where.
        topic: String,
        /// Its replay count now.
        replay: u32,
    },
    /// Not replayed: it was replayed too often already.
    Refused {
        /// The event.
        id: EventId,
        /// Why.
        reason: String,
    },
}

/// Replays dead letters: publishes each back to its original topic (see the
/// [module docs](self) for what a replayed event carries). The same event id
/// is replayed once even if several copies are given: as its newest copy (the
/// highest replay count; the later one on a tie), in the order the events
/// first appear. Stops at the first publish error.
pub async fn replay<B: Bus>(
    bus: &B,
    items: &[DeadLettered],
    options: ReplayOptions,
) -> Result<Vec<Replayed>> {
    replay_with(items, options, |d| bus.publish(d.replay_envelope())).await
}

/// [`replay`], with each replay published by `publish` (given the copy to
/// replay: the newest of its event), for a backend whose replay is not
/// [`DeadLettered::replay_envelope`] — on Kafka, the record as it was
/// received is published again. Same choice of copies, same refusals.
pub async fn replay_with<'a, F, Fut>(
    items: &'a [DeadLettered],
    options: ReplayOptions,
    mut publish: F,
) -> Result<Vec<Replayed>>
where
    F: FnMut(&'a DeadLettered) -> Fut,
    Fut: std::future::Future<Output = choreo_core::Result<()>>,
{
    let mut newest: Vec<&'a DeadLettered> = Vec::new();
    let mut index: std::collections::HashMap<&EventId, usize> = Default::default();
    for d in items {
        match index.get(&d.id) {
            Some(&i) if d.replays >= newest[i].replays => newest[i] = d,
            Some(_) => {}
            None => {
                index.insert(&d.id, newest.len());
                newest.push(d);
            }
        }
    }
    let mut done = Vec::new();
    for d in newest {
        if d.replays >= options.max_replays {
            done.push(Replayed::Refused {
                id: d.id.clone(),
                reason: format!(
                    "already replayed {} times (the limit is {}): fix the cause, or raise --max-replays",
                    d.replays, options.max_replays
                ),
            });
            continue;
        }
        if !options.dry_run {
            publish(d)
                .await
                .map_err(|source| Error::Publish { source })?;
        }
        done.push(Replayed::Published {
            id: d.id.clone(),
            topic: d.topic.clone(),
            replay: d.replays + 1,
        });
    }
    Ok(done)
}

/// Every dead letter retained by an in-process bus, on every topic ending in
/// `.dlq` (or on `topics` when given), oldest first per partition.
pub fn in_process(bus: &crate::InProcessBus, topics: &[String]) -> Vec<DeadLettered> {
    let topics: Vec<String> = if topics.is_empty() {
        bus.topics()
            .into_iter()
            .filter(|t| t.ends_with(".dlq"))
            .collect()
    } else {
        topics.to_vec()
    };
    topics
        .iter()
        .flat_map(|t| bus.retained(t))
        .filter_map(|e| DeadLettered::from_envelope((*e).clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use choreo_core::{DeadLetter, Delivery, Settle, Settlement, dead_letter_envelope};
    use std::sync::Arc;

    struct NoSettle;
    impl Settle for NoSettle {
        fn settle(&self, _: u32, _: u64, _: u64, _: Settlement) {}
    }

    fn dead(reason: &str) -> DeadLettered {
        let env = Envelope::new("OrderPlaced", "orders", "{}").with_source("checkout");
        let d = Delivery::new(Arc::new(env), 2, 40, 1, 0, Arc::new(NoSettle));
        let copy = dead_letter_envelope(
            &d,
            &DeadLetter {
                topic: "orders.dlq".into(),
                reason: reason.into(),
                attempts: 3,
                service: "payment".into(),
            },
        );
        d.ack();
        DeadLettered::from_envelope(copy).unwrap()
    }

    #[test]
    fn a_copy_reads_back_and_its_replay_is_the_original_with_a_count() {
        let d = dead("handler failed after 3 attempts: card declined");
        assert_eq!(
            (d.topic.as_str(), d.partition, d.offset, d.attempts),
            ("orders", Some(2), Some(40), 3)
        );
        assert_eq!(d.service, "payment");
        assert_eq!(d.replays, 0);
        assert!(d.dead_lettered_at.is_some());
        let r = d.replay_envelope();
        assert_eq!(r.topic, "orders");
        assert_eq!(r.id, d.envelope.id);
        assert_eq!(r.correlation_id, d.envelope.correlation_id);
        assert_eq!(r.headers.get_str(dlq_headers::REPLAYS), Some("1"));
        assert!(r.headers.get(dlq_headers::REASON).is_none());
        assert_eq!(r.headers.len(), 1);
    }

    #[test]
    fn reasons_group_without_their_counts() {
        assert_eq!(
            dead("handler failed after 3 attempts: card declined").reason_kind(),
            "handler failed: card declined"
        );
        assert_eq!(
            dead("permanent error after 1 attempt: bad").reason_kind(),
            "permanent error: bad"
        );
        let items = vec![
            dead("handler failed after 3 attempts: x"),
            dead("handler failed after 5 attempts: x"),
            dead("refused: too big"),
        ];
        assert_eq!(
            by_reason(&items),
            vec![
                ("handler failed: x".to_owned(), 2),
                ("refused: too big".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn filters_combine() {
        let d = dead("handler failed after 3 attempts: card declined");
        assert!(Filter::default().matches(&d));
        assert!(
            Filter {
                service: Some("payment".into()),
                reason: Some("declined".into()),
                ..Default::default()
            }
            .matches(&d)
        );
        assert!(
            !Filter {
                service: Some("shipping".into()),
                ..Default::default()
            }
            .matches(&d)
        );
        assert!(
            !Filter {
                since: Some(Timestamp::now().saturating_add(std::time::Duration::from_secs(60))),
                ..Default::default()
            }
            .matches(&d)
        );
        assert!(
            Filter {
                ids: vec![d.id.clone()],
                ..Default::default()
            }
            .matches(&d)
        );
    }
}
