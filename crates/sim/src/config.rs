//! What a simulation runs: how many flows, how fast, how services behave, which faults.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How long a simulated handler works before emitting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Latency {
    /// Always this long.
    Fixed(#[serde(with = "crate::config::millis")] Duration),
    /// Uniformly between the two bounds.
    Uniform(
        #[serde(with = "crate::config::millis")] Duration,
        #[serde(with = "crate::config::millis")] Duration,
    ),
}

impl Latency {
    /// The latency for a roll in `[0, 1)`.
    pub fn sample(&self, roll: f64) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform(lo, hi) => lo + (hi.saturating_sub(lo)).mul_f64(roll.clamp(0.0, 1.0)),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Uniform(Duration::from_millis(1), Duration::from_millis(10))
    }
}

impl FromStr for Latency {
    type Err = Error;

    /// `5ms` (fixed) or `1ms..20ms` (uniform).
    fn from_str(s: &str) -> Result<Latency> {
        match s.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (duration(lo)?, duration(hi)?);
                if hi < lo {
                    return Err(Error::Config(format!(
                        "latency range '{s}' ends before it starts: write the smaller bound first"
                    )));
                }
                Ok(Latency::Uniform(lo, hi))
            }
            None => Ok(Latency::Fixed(duration(s)?)),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Latency::Fixed(d) => write!(f, "{}", fmt_duration(*d)),
            Latency::Uniform(lo, hi) => write!(f, "{}..{}", fmt_duration(*lo), fmt_duration(*hi)),
        }
    }
}

/// Parses `250ms`, `2s`, `1m`, `1h` (and `1.5s`).
pub fn duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let bad = || {
        Error::Config(format!(
            "'{s}' is not a duration: write a number and a unit, such as 250ms, 2s, 1m"
        ))
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A fault to inject. Probabilities are per handled event (per attempt for
/// [`Fault::Fail`]); `event: None` means any event the service handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// The service handles the event but emits nothing (a lost emission).
    Drop {
        /// The service.
        service: String,
        /// Only when handling this event type.
        event: Option<String>,
        /// Probability per handled event.
        probability: f64,
    },
    /// An attempt fails with an error (retried; dead-lettered after the last attempt).
    Fail {
        /// The service.
        service: String,
        /// Only when handling this event type.
        event: Option<String>,
        /// Probability per attempt.
        probability: f64,
    },
    /// The service is stopped from `from` to `until` after the start of the
    /// run; with no `until` it stays down to the end, and the events it owes
    /// are never emitted (the flows waiting for it are stuck).
    Down {
        /// The service.
        service: String,
        /// When it goes down, from the start of the run.
        #[serde(with = "crate::config::millis")]
        from: Duration,
        /// When it comes back (never, when `None`).
        #[serde(default, with = "crate::config::opt_millis")]
        until: Option<Duration>,
    },
    /// The service also emits an event type the topology does not declare.
    Extra {
        /// The service.
        service: String,
        /// Probability per handled event.
        probability: f64,
    },
    /// On a `one_of` reaction, the service emits two branches instead of one.
    WrongBranch {
        /// The service.
        service: String,
        /// Probability per handled event with a choice.
        probability: f64,
    },
    /// The bus delivers a published event twice (same id), as at-least-once may.
    Duplicate {
        /// Probability per published event.
        probability: f64,
    },
}

impl Fault {
    /// The fault's kind as written on the command line and in the sidecar.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Drop { .. } => "drop",
            Fault::Fail { .. } => "fail",
            Fault::Down { .. } => "down",
            Fault::Extra { .. } => "extra",
            Fault::WrongBranch { .. } => "wrong-branch",
            Fault::Duplicate { .. } => "duplicate",
        }
    }

    /// Parses a fault of `kind` from its argument:
    ///
    /// | kind | argument |
    /// |---|---|
    /// | `drop` | `SERVICE[:EVENT]=P` |
    /// | `fail` | `SERVICE[:EVENT]=P` |
    /// | `down` | `SERVICE=FROM..UNTIL` (durations from the start) |
    /// | `extra` | `SERVICE=P` |
    /// | `wrong-branch` | `SERVICE=P` |
    /// | `duplicate` | `P` |
    pub fn parse(kind: &str, arg: &str) -> Result<Fault> {
        let prob = |p: &str| -> Result<f64> {
            let v: f64 = p.trim().parse().map_err(|_| {
                Error::Config(format!(
                    "--{kind} {arg}: '{p}' is not a probability between 0 and 1"
                ))
            })?;
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::Config(format!(
                    "--{kind} {arg}: the probability {v} is outside 0..1"
                )));
            }
            Ok(v)
        };
        let target = |arg: &str| -> Result<(String, Option<String>, String)> {
            let (lhs, rhs) = arg.split_once('=').ok_or_else(|| {
                Error::Config(format!(
                    "--{kind} {arg}: expected SERVICE[:EVENT]=VALUE, such as payment=0.1 or payment:OrderPlaced=0.1"
                ))
            })?;
            let (service, event) = match lhs.split_once(':') {
                Some((s, e)) => (s.trim().to_owned(), Some(e.trim().to_owned())),
                None => (lhs.trim().to_owned(), None),
            };
            if service.is_empty() {
                return Err(Error::Config(format!(
                    "--{kind} {arg}: the service name is empty"
                )));
            }
            Ok((service, event, rhs.to_owned()))
        };
        match kind {
            "drop" | "fail" => {
                let (service, event, p) = target(arg)?;
                let probability = prob(&p)?;
                Ok(if kind == "drop" {
                    Fault::Drop {
                        service,
                        event,
                        probability,
                    }
                } else {
                    Fault::Fail {
                        service,
                        event,
                        probability,
                    }
                })
            }
            "down" => {
                let (service, event, window) = target(arg)?;
                if event.is_some() {
                    return Err(Error::Config(format!(
                        "--down {arg}: a whole service goes down; drop the ':EVENT' part"
                    )));
                }
                let (from, until) = window.split_once("..").ok_or_else(|| {
                    Error::Config(format!(
                        "--down {arg}: expected SERVICE=FROM..UNTIL (payment=1s..3s) or SERVICE=FROM.. (down to the end)"
                    ))
                })?;
                let from = duration(from)?;
                let until = if until.trim().is_empty() {
                    None
                } else {
                    Some(duration(until)?)
                };
                if until.is_some_and(|u| u <= from) {
                    return Err(Error::Config(format!(
                        "--down {arg}: the window ends before it starts"
                    )));
                }
                Ok(Fault::Down {
                    service,
                    from,
                    until,
                })
            }
            "extra" | "wrong-branch" => {
                let (service, event, p) = target(arg)?;
                if event.is_some() {
                    return Err(Error::Config(format!(
                        "--{kind} {arg}: write SERVICE=P, without an event"
                    )));
                }
                let probability = prob(&p)?;
                Ok(if kind == "extra" {
                    Fault::Extra {
                        service,
                        probability,
                    }
                } else {
                    Fault::WrongBranch {
                        service,
                        probability,
                    }
                })
            }
            "duplicate" => Ok(Fault::Duplicate {
                probability: prob(arg)?,
            }),
            other => Err(Error::Config(format!(
                "unknown fault kind '{other}': use drop, fail, down, extra, wrong-branch or duplicate"
            ))),
        }
    }

    /// The service it targets, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Fault::Drop { service, .. }
            | Fault::Fail { service, .. }
            | Fault::Down { service, .. }
            | Fault::Extra { service, .. }
            | Fault::WrongBranch { service, .. } => Some(service),
            Fault::Duplicate { .. } => None,
        }
    }
}

/// Everything a simulation run needs besides the topology.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimConfig {
    /// Flows to start. Default 200.
    pub flows: u64,
    /// Flows started per second; `None` starts them as fast as the bus takes them.
    pub rate: Option<f64>,
    /// Deliveries each simulated service handles at once per partition. Default 32.
    pub concurrency: usize,
    /// Seed of every random decision: the same seed gives the same branches,
    /// latencies and faults for each flow, whatever the scheduling.
    pub seed: u64,
    /// Handler latency of every reaction without its own.
    pub latency: Latency,
    /// Handler latency of particular reactions, by `service:event` (or
    /// `service` for all of its reactions).
    #[serde(default)]
    pub latencies: HashMap<String, Latency>,
    /// Relative weights of `one_of` branches by event name (default 1 each).
    pub weights: HashMap<String, f64>,
    /// Faults to inject.
    pub faults: Vec<Fault>,
    /// Attempts per delivery before dead-lettering. Default 3.
    pub max_attempts: u32,
    /// Partitions of every topic. Default 4.
    pub partitions: u32,
    /// Reactions completed after their handler, by `service:event` (or
    /// `service` for all of its reactions): the handler acks at once, and
    /// its events are published this much later through the service's
    /// `Publisher` as caused by the event (what `publish_caused_by` does for
    /// a payment provider's callback).
    #[serde(default)]
    pub deferred: HashMap<String, Latency>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            flows: 200,
            rate: None,
            concurrency: 32,
            seed: 1,
            latency: Latency::default(),
            latencies: HashMap::new(),
            weights: HashMap::new(),
            faults: Vec::new(),
            max_attempts: 3,
            partitions: 4,
            deferred: HashMap::new(),
        }
    }
}

impl SimConfig {
    /// The latency of `service` reacting to `event`: its own, its service's, or the default.
    pub fn latency_of(&self, service: &str, event: &str) -> Latency {
        self.latencies
            .get(&format!("{service}:{event}"))
            .or_else(|| self.latencies.get(service))
            .copied()
            .unwrap_or(self.latency)
    }

    /// How long after its handler `service`'s reaction to `event` is
    /// published, when it is deferred.
    pub fn deferred_of(&self, service: &str, event: &str) -> Option<Latency> {
        self.deferred
            .get(&format!("{service}:{event}"))
            .or_else(|| self.deferred.get(service))
            .copied()
    }
}

/// Parses `SERVICE[:EVENT]=DELAY` for a reaction completed after its handler.
pub fn parse_deferred(arg: &str) -> Result<(String, Latency)> {
    let (target, delay) = arg.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--deferred {arg}: expected SERVICE[:EVENT]=DELAY, such as payment:OrderPlaced=200ms..2s"
        ))
    })?;
    if target.trim().is_empty() {
        return Err(Error::Config(format!(
            "--deferred {arg}: name the service (and event) before '='"
        )));
    }
    Ok((target.trim().to_owned(), delay.trim().parse()?))
}

/// Parses `SERVICE[:EVENT]=LATENCY` for one reaction's (or service's) latency.
pub fn parse_latency(arg: &str) -> Result<(String, Latency)> {
    let (target, latency) = arg.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--latency-of {arg}: expected SERVICE[:EVENT]=LATENCY, such as payment:OrderPlaced=20ms..200ms"
        ))
    })?;
    if target.trim().is_empty() {
        return Err(Error::Config(format!(
            "--latency-of {arg}: the service name is empty"
        )));
    }
    Ok((target.trim().to_owned(), latency.parse()?))
}

/// Parses `EVENT=WEIGHT` for branch weights.
pub fn parse_weight(arg: &str) -> Result<(String, f64)> {
    let (event, w) = arg.split_once('=').ok_or_else(|| {
        Error::Config(format!(
            "--weight {arg}: expected EVENT=WEIGHT, such as PaymentCaptured=9"
        ))
    })?;
    let w: f64 = w
        .trim()
        .parse()
        .map_err(|_| Error::Config(format!("--weight {arg}: '{w}' is not a number")))?;
    if !(w.is_finite() && w >= 0.0) {
        return Err(Error::Config(format!(
            "--weight {arg}: a weight must be 0 or more"
        )));
    }
    Ok((event.trim().to_owned(), w))
}

/// Optional durations as integer milliseconds (or null) in JSON.
pub(crate) mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Durations as integer milliseconds in JSON.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_from_their_command_line_form() {
        assert_eq!(
            Fault::parse("drop", "payment:OrderPlaced=0.25").unwrap(),
            Fault::Drop {
                service: "payment".into(),
                event: Some("OrderPlaced".into()),
                probability: 0.25
            }
        );
        assert_eq!(
            Fault::parse("down", "inventory=1s..2500ms").unwrap(),
            Fault::Down {
                service: "inventory".into(),
                from: Duration::from_secs(1),
                until: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            Fault::parse("down", "shipping=2s..").unwrap(),
            Fault::Down {
                service: "shipping".into(),
                from: Duration::from_secs(2),
                until: None
            }
        );
        assert_eq!(
            Fault::parse("duplicate", "0.1").unwrap(),
            Fault::Duplicate { probability: 0.1 }
        );
        let e = Fault::parse("fail", "payment=1.5").unwrap_err().to_string();
        assert!(e.contains("outside 0..1"), "{e}");
        let e = Fault::parse("down", "payment=3s..1s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends before it starts"), "{e}");
        let e = Fault::parse("slow", "payment=1").unwrap_err().to_string();
        assert!(e.contains("unknown fault kind 'slow'"), "{e}");
        let e = Fault::parse("drop", "payment").unwrap_err().to_string();
        assert!(e.contains("expected SERVICE[:EVENT]=VALUE"), "{e}");
    }

    #[test]
    fn latencies_and_durations_parse() {
        assert_eq!(
            "5ms".parse::<Latency>().unwrap(),
            Latency::Fixed(Duration::from_millis(5))
        );
        assert_eq!(
            "1ms..2s".parse::<Latency>().unwrap(),
            Latency::Uniform(Duration::from_millis(1), Duration::from_secs(2))
        );
        assert!("2s..1s".parse::<Latency>().is_err());
        assert!(duration("5 parsecs").is_err());
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        let l = Latency::Uniform(Duration::from_millis(10), Duration::from_millis(20));
        assert_eq!(l.sample(0.0), Duration::from_millis(10));
        assert_eq!(l.sample(0.5), Duration::from_millis(15));
    }

    #[test]
    fn deferred_reactions_parse_and_are_found_by_service_or_reaction() {
        let (target, delay) = parse_deferred("payment:OrderPlaced=200ms..2s").unwrap();
        assert_eq!(target, "payment:OrderPlaced");
        assert_eq!(
            delay,
            Latency::Uniform(Duration::from_millis(200), Duration::from_secs(2))
        );
        assert!(parse_deferred("payment").is_err());
        assert!(parse_deferred("=1s").is_err());
        let mut c = SimConfig::default();
        c.deferred
            .insert("kyc".into(), Latency::Fixed(Duration::from_secs(1)));
        c.deferred.insert(
            "payment:OrderPlaced".into(),
            Latency::Fixed(Duration::from_millis(5)),
        );
        assert_eq!(
            c.deferred_of("payment", "OrderPlaced"),
            Some(Latency::Fixed(Duration::from_millis(5)))
        );
        assert_eq!(c.deferred_of("payment", "OutOfStock"), None);
        assert_eq!(
            c.deferred_of("kyc", "KycRequested"),
            Some(Latency::Fixed(Duration::from_secs(1)))
        );
    }
}
