//! Generates a synthetic capture of the order-fulfillment saga for benchmarks.
//!
//! ```text
//! cargo run --release -p choreo-trace --example gen_capture -- [-e EVENTS | -n RECORDS] [-o FILE] [--seed N] [--faults RATE]
//! ```
//!
//! Flows follow `topologies/order-fulfillment.yaml`: every event gets a
//! receipt from each consumer (sinks included), branches are taken at
//! realistic rates (10 % of payments fail, 10 % of reservations find no
//! stock and are refunded), many flows overlap in time, and records arrive
//! roughly — not exactly — in time order. A fraction `--faults` of flows
//! carries a fault: a dead-lettered shipment, a payment that emits both
//! branches, a reservation that never comes (stuck), a redelivered duplicate,
//! clock skew.
//!
//! `-e EVENTS` (the default, 1 000 000) writes exactly that many events —
//! envelopes other than receipts and dead-letter copies, a redelivered
//! duplicate included — plus their receipts and dead-letter copies: about
//! twice as many records. The last flow is cut short where the count is
//! reached, as a capture ends mid-flow. `-n RECORDS` instead counts records
//! (events + receipts + dead-letter copies) and stops at that many.

use std::path::PathBuf;

use bytes::Bytes;
use choreo_core::{
    ContentType, Envelope, EventId, Headers, Name, Outcome, Receipt, Timestamp, dlq_headers,
};
use choreo_trace::Record;
use choreo_trace::capture::{Format, Writer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct Gen {
    rng: SmallRng,
    faults: f64,
    records: Vec<(i64, u64, Record)>,
    seq: u64,
    /// Events still to generate (`-e`); once none are left, further events
    /// and the receipts of events not generated are dropped.
    events_left: u64,
}

const ORDERS: &str = "orders";
const PAYMENTS: &str = "payments";
const INVENTORY: &str = "inventory";
const SHIPPING: &str = "shipping";

impl Gen {
    fn id(&mut self, time_us: i64) -> EventId {
        let random: [u8; 10] = self.rng.random();
        let ms = u64::try_from(time_us / 1000).unwrap_or(0);
        EventId::from_uuid(uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid())
    }

    fn push(&mut self, env: Envelope) {
        let receipt = env.event_type.as_str() == choreo_core::RECEIPT_TYPE;
        let dead_letter = env.headers.get_str(dlq_headers::REASON).is_some();
        if receipt || dead_letter {
            // Only for an event that was generated.
            let event = if receipt {
                env.causation_id.as_ref()
            } else {
                Some(&env.id)
            };
            if self.events_left == 0
                && !event.is_some_and(|h| self.records.iter().any(|r| &r.2.envelope.id == h))
            {
                return;
            }
        } else {
            if self.events_left == 0 {
                return;
            }
            self.events_left -= 1;
        }
        let t = env.time.as_micros();
        let partition = (self.seq % 8) as u32;
        let rec = Record::new(env).at(partition, self.seq);
        self.seq += 1;
        self.records.push((t, self.seq, rec));
    }

    fn event(
        &mut self,
        ty: &'static str,
        topic: &'static str,
        source: &'static str,
        at: i64,
        cause: Option<&Envelope>,
    ) -> Envelope {
        let id = self.id(at);
        let order = self.rng.random_range(1..1_000_000u32);
        let data = Bytes::from(format!(
            "{{\"order_id\":{order},\"amount_cents\":{}}}",
            order % 50_000
        ));
        let (correlation_id, causation_id, key) = match cause {
            Some(c) => (c.correlation_id.clone(), Some(c.id.clone()), c.key.clone()),
            None => (id.clone(), None, Some(Bytes::from(id.to_string()))),
        };
        let tp = format!(
            "00-{:032x}-{:016x}-01",
            self.rng.random::<u128>(),
            self.rng.random::<u64>()
        );
        let env = Envelope {
            id,
            event_type: Name::from_static(ty),
            source: Name::from_static(source),
            topic: Name::from_static(topic),
            key,
            correlation_id,
            causation_id,
            time: Timestamp::from_micros(at),
            traceparent: Some(tp),
            tracestate: None,
            content_type: ContentType::Json,
            data,
            headers: Headers::new(),
        };
        self.push(env.clone());
        env
    }

    /// A receipt of `service` handling `handled`; returns when the handler finished.
    fn receipt(
        &mut self,
        service: &'static str,
        handled: &Envelope,
        outcome: Outcome,
        emitted: Vec<EventId>,
    ) -> i64 {
        let queue = self.rng.random_range(200..3_000i64);
        let dur = self.rng.random_range(300..20_000u64);
        self.receipt_timed(service, handled, outcome, emitted, queue, dur)
    }

    fn receipt_timed(
        &mut self,
        service: &'static str,
        handled: &Envelope,
        outcome: Outcome,
        emitted: Vec<EventId>,
        queue: i64,
        dur: u64,
    ) -> i64 {
        let started = handled.time.as_micros() + queue;
        let r = Receipt {
            service: Name::from_static(service),
            event_id: handled.id.clone(),
            event_type: handled.event_type.clone(),
            correlation_id: handled.correlation_id.clone(),
            topic: handled.topic.clone(),
            partition: 0,
            offset: self.seq,
            outcome,
            attempts: if outcome == Outcome::DeadLettered {
                5
            } else {
                1
            },
            reason: (outcome == Outcome::DeadLettered)
                .then(|| "handler failed after 5 attempts: carrier API timeout".to_owned()),
            started: Timestamp::from_micros(started),
            duration_us: dur,
            emitted,
        };
        let done = started + dur as i64;
        let mut env = r.to_envelope(Name::from_static(choreo_core::RECEIPTS_TOPIC), handled);
        env.id = self.id(done);
        env.time = Timestamp::from_micros(done);
        self.push(env);
        done
    }

    /// One handler: receipt + its emission published when it finished.
    fn react(
        &mut self,
        service: &'static str,
        on: &Envelope,
        emit: &[(&'static str, &'static str)],
    ) -> Vec<Envelope> {
        let queue = self.rng.random_range(200..3_000i64);
        let dur = self.rng.random_range(300..20_000u64);
        // The handler publishes its events as it finishes.
        let at = on.time.as_micros() + queue + dur as i64;
        let out: Vec<Envelope> = emit
            .iter()
            .map(|(ty, topic)| self.event(ty, topic, service, at, Some(on)))
            .collect();
        let ids = out.iter().map(|e| e.id.clone()).collect();
        self.receipt_timed(service, on, Outcome::Acked, ids, queue, dur);
        out
    }

    fn flow(&mut self, start: i64) {
        let fault = if self.rng.random_bool(self.faults) {
            self.rng.random_range(0..5u8)
        } else {
            u8::MAX
        };
        let placed = self.event("OrderPlaced", ORDERS, "checkout", start, None);
        if fault == 4 {
            // At-least-once: the first event delivered (and captured) twice.
            self.push(placed.clone());
        }
        let pay_ok = self.rng.random_bool(0.9);
        if fault == 1 {
            // Broken contract: both branches of payment's one_of.
            self.react(
                "payment",
                &placed,
                &[("PaymentCaptured", PAYMENTS), ("PaymentFailed", PAYMENTS)],
            );
            return;
        }
        if !pay_ok {
            let failed = self
                .react("payment", &placed, &[("PaymentFailed", PAYMENTS)])
                .remove(0);
            let cancelled = self
                .react("checkout", &failed, &[("OrderCancelled", ORDERS)])
                .remove(0);
            self.receipt("notifications", &cancelled, Outcome::Acked, vec![]);
            return;
        }
        let captured = self
            .react("payment", &placed, &[("PaymentCaptured", PAYMENTS)])
            .remove(0);
        if fault == 2 {
            // Stuck: inventory never reacts.
            return;
        }
        let stock = self.rng.random_bool(0.9);
        if !stock {
            let out = self
                .react("inventory", &captured, &[("OutOfStock", INVENTORY)])
                .remove(0);
            let refunded = self
                .react("payment", &out, &[("PaymentRefunded", PAYMENTS)])
                .remove(0);
            let cancelled = self
                .react("checkout", &refunded, &[("OrderCancelled", ORDERS)])
                .remove(0);
            self.receipt("notifications", &cancelled, Outcome::Acked, vec![]);
            return;
        }
        let reserved = self
            .react("inventory", &captured, &[("StockReserved", INVENTORY)])
            .remove(0);
        if fault == 0 {
            // Shipping gives up: receipt dead-lettered, copy on shipping... the source topic's dlq.
            let done = self.receipt("shipping", &reserved, Outcome::DeadLettered, vec![]);
            let mut copy = reserved.clone();
            copy.topic = Name::from(format!("{INVENTORY}.dlq"));
            copy.time = Timestamp::from_micros(done);
            copy.headers.insert(
                dlq_headers::REASON,
                "handler failed after 5 attempts: carrier API timeout",
            );
            copy.headers.insert(dlq_headers::ATTEMPTS, "5");
            copy.headers.insert(dlq_headers::SERVICE, "shipping");
            self.push(copy);
            return;
        }
        let mut shipped = self
            .react("shipping", &reserved, &[("OrderShipped", SHIPPING)])
            .remove(0);
        if fault == 3 {
            // Clock skew: shipping's clock is behind.
            shipped.time = Timestamp::from_micros(reserved.time.as_micros() - 50_000);
            if let Some(last) = self
                .records
                .iter_mut()
                .rev()
                .find(|r| r.2.envelope.id == shipped.id)
            {
                last.2.envelope.time = shipped.time;
                last.0 = shipped.time.as_micros();
            }
        }
        self.receipt("notifications", &shipped, Outcome::Acked, vec![]);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut records: Option<u64> = None;
    let mut events: u64 = 1_000_000;
    let mut out = PathBuf::from("capture.avro");
    let mut seed = 42u64;
    let mut faults = 0.02f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "-e" | "--events" => events = val()?.replace('_', "").parse()?,
            "-n" | "--records" => records = Some(val()?.replace('_', "").parse()?),
            "-o" | "--output" => out = PathBuf::from(val()?),
            "--seed" => seed = val()?.parse()?,
            "--faults" => faults = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "gen_capture [-e EVENTS | -n RECORDS] [-o FILE(.avro|.jsonl)] [--seed N] [--faults RATE]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument '{other}'").into()),
        }
    }
    let mut g = Gen {
        rng: SmallRng::seed_from_u64(seed),
        faults,
        records: Vec::new(),
        seq: 0,
        // -n: no event budget; records are counted as they are written.
        events_left: if records.is_some() { u64::MAX } else { events },
    };
    let max_records = records.unwrap_or(u64::MAX);
    let mut w = Writer::create(&out, Format::from_path(&out))?;
    // Flows start 150 µs apart and last tens of milliseconds: hundreds overlap.
    let mut t: i64 = 1_764_000_000_000_000;
    let mut written = 0u64;
    let mut written_events = 0u64;
    let mut flows = 0u64;
    while written < max_records && g.events_left > 0 {
        g.records.clear();
        for _ in 0..2_000 {
            if g.events_left == 0 {
                break;
            }
            g.flow(t);
            flows += 1;
            t += g.rng.random_range(50..250);
        }
        // Roughly time-ordered, as a capture of several partitions is.
        g.records
            .sort_by_key(|(time, seq, _)| (*time / 2_000, *seq));
        for (_, _, r) in &g.records {
            if written == max_records {
                break;
            }
            w.write(r)?;
            written += 1;
            let env = &r.envelope;
            if env.event_type.as_str() != choreo_core::RECEIPT_TYPE
                && env.headers.get_str(dlq_headers::REASON).is_none()
            {
                written_events += 1;
            }
        }
    }
    w.finish()?;
    eprintln!(
        "wrote {written} records ({written_events} events, {flows} flows) to {}",
        out.display()
    );
    Ok(())
}
