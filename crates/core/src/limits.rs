//! Size limits on events: refused at publish, dead-lettered on consume.

use crate::Envelope;

/// How large an event may be. The runtime refuses an event that breaks a
/// limit when it is published (with [`Error::Refused`](crate::Error::Refused))
/// and dead-letters one that arrives anyway (from another producer) with the
/// reason, instead of handing it to a handler.
///
/// Built from [`Limits::default`] with a setter per field:
/// `Limits::default().max_payload_bytes(64 << 10)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest payload (`data`), in bytes. Default 1 MiB, Kafka's default
    /// `message.max.bytes` neighbourhood.
    pub max_payload_bytes: usize,
    /// Most extra headers. Default 64.
    pub max_headers: usize,
    /// Largest total size of the extra headers (names and values), in bytes. Default 64 KiB.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_headers: 64,
            max_header_bytes: 64 << 10,
        }
    }
}

impl Limits {
    /// No limits (for tools that must read whatever is there).
    pub const fn unlimited() -> Self {
        Limits {
            max_payload_bytes: usize::MAX,
            max_headers: usize::MAX,
            max_header_bytes: usize::MAX,
        }
    }

    /// Sets the largest payload, in bytes.
    pub const fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Sets the most extra headers.
    pub const fn max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }

    /// Sets the largest total size of the extra headers, in bytes.
    pub const fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Which limit `envelope` breaks, in words naming the limit to raise; `None` when it fits.
    ///
    /// Inlined where it is called (every delivery and every emitted event is
    /// checked): the comparisons are a few instructions, and the words are
    /// written apart, only for an envelope that does not fit.
    #[inline]
    pub fn violation(&self, envelope: &Envelope) -> Option<String> {
        if self.fits(envelope) {
            None
        } else {
            self.describe(envelope)
        }
    }

    /// Whether `envelope` is within every limit.
    #[inline]
    fn fits(&self, envelope: &Envelope) -> bool {
        envelope.data.len() <= self.max_payload_bytes
            && envelope.headers.len() <= self.max_headers
            && (envelope.headers.is_empty() || header_bytes(envelope) <= self.max_header_bytes)
    }

    /// The first limit `envelope` breaks, in words.
    #[cold]
    fn describe(&self, envelope: &Envelope) -> Option<String> {
        let payload = envelope.data.len();
        if payload > self.max_payload_bytes {
            return Some(format!(
                "payload of {payload} bytes is over the limit of {} bytes (Limits::max_payload_bytes)",
                self.max_payload_bytes
            ));
        }
        let headers = envelope.headers.len();
        if headers > self.max_headers {
            return Some(format!(
                "{headers} headers are over the limit of {} (Limits::max_headers)",
                self.max_headers
            ));
        }
        let header_bytes = header_bytes(envelope);
        if header_bytes > self.max_header_bytes {
            return Some(format!(
                "headers of {header_bytes} bytes are over the limit of {} bytes (Limits::max_header_bytes)",
                self.max_header_bytes
            ));
        }
        None
    }

    /// [`violation`](Limits::violation) as an error for a publisher.
    #[inline]
    pub fn check(&self, envelope: &Envelope) -> crate::Result<()> {
        if self.fits(envelope) {
            Ok(())
        } else {
            self.refuse(envelope)
        }
    }

    #[cold]
    fn refuse(&self, envelope: &Envelope) -> crate::Result<()> {
        match self.describe(envelope) {
            None => Ok(()),
            Some(reason) => Err(crate::Error::Refused {
                event_type: envelope.event_type.to_string(),
                topic: envelope.topic.to_string(),
                reason,
            }),
        }
    }
}

/// The size of an envelope's extra headers: names and values.
fn header_bytes(envelope: &Envelope) -> usize {
    envelope
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_enforced_and_named() {
        let l = Limits {
            max_payload_bytes: 10,
            max_headers: 2,
            max_header_bytes: 20,
        };
        let mut e = Envelope::new("T", "t", "0123456789");
        assert_eq!(l.violation(&e), None);
        e.data = "0123456789A".into();
        let err = l.check(&e).unwrap_err().to_string();
        assert_eq!(
            err,
            "event 'T' on 't' is refused: payload of 11 bytes is over the limit of 10 bytes (Limits::max_payload_bytes)"
        );
        e.data = "x".into();
        for h in ["a", "b", "c"] {
            e.headers.insert(h, "v");
        }
        assert!(l.violation(&e).unwrap().contains("Limits::max_headers"));
        let mut e = Envelope::new("T", "t", "x");
        e.headers.insert("name", "a value far too long");
        assert!(
            l.violation(&e)
                .unwrap()
                .contains("Limits::max_header_bytes")
        );
        assert_eq!(Limits::unlimited().violation(&e), None);
    }
}
