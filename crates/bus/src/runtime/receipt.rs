//! Receipts: what the service did with each delivery, published to the
//! receipts topic (`choreo.receipts` unless switched off) for the tracer.

use std::sync::Arc;

use choreo_core::{Bus, Envelope, EventId, Name, ReceiptHead, ReceiptRef, Timestamp};

use super::pipeline::Settled;
use super::running::Runtime;

impl<B: Bus> Runtime<B> {
    /// The receipt of a delivery settled as `settled`, read from `place`
    /// (partition, offset), handled from `started` until `ended`: the
    /// envelope to publish on `topic`. With `head`, the route's
    /// [`ReceiptHead`] begins the document (when it was made for these
    /// names; else the document is written whole).
    ///
    /// Its id comes from the clock reading `ended`, already made; the caller
    /// keeps only the envelope across the await that publishes it.
    pub(super) fn receipt(
        &self,
        topic: &Name,
        env: &Envelope,
        place: (u32, u64),
        settled: Settled,
        (started, ended): (Timestamp, Timestamp),
        head: Option<&ReceiptHead>,
    ) -> Arc<Envelope> {
        let (partition, offset) = place;
        // Borrowed: nothing is copied into a `Receipt` to be written.
        let receipt = ReceiptRef {
            service: &self.shared.name,
            event_id: &env.id,
            event_type: &env.event_type,
            correlation_id: &env.correlation_id,
            topic: &env.topic,
            partition,
            offset,
            outcome: settled.outcome,
            attempts: settled.attempts,
            reason: settled.reason.as_deref(),
            started,
            duration_us: ended.micros_since(started).max(0) as u64,
            emitted: &settled.emitted,
        };
        let id = EventId::generate(ended);
        match head {
            Some(head) => receipt.to_shared_envelope_with(head, id, topic.clone(), env),
            None => receipt.to_shared_envelope(id, topic.clone(), env),
        }
    }

    /// A receipt could not be published. Receipts are observability: losing
    /// one is counted and logged, and must not redeliver the event.
    pub(super) fn receipt_lost(&self, topic: &Name, e: &choreo_core::Error) {
        self.published.failed(topic);
        tracing::warn!(service = %self.shared.name, error = %e, "publishing a receipt failed");
    }
}
