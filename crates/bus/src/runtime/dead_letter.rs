//! Dead-lettering: a delivery that cannot be handled goes to its topic's
//! dead-letter topic with the reason beside it, as received.

use std::sync::Arc;

use choreo_core::{Bus, DeadLetter, Delivery, Envelope, Name, Outcome};

use super::pipeline::{Emitted, Settled};
use super::running::Runtime;
use super::worker::WorkerRoute;

impl<B: Bus> Runtime<B> {
    /// Sends a delivery to its dead-letter topic with `reason`.
    pub(super) async fn dead_letter(
        &self,
        d: Delivery,
        env: &Arc<Envelope>,
        route: &mut WorkerRoute,
        reason: String,
        attempts: u32,
    ) -> Settled {
        let name = &self.shared.name;
        tracing::warn!(
            service = %name, event_type = %env.event_type, event_id = %env.id,
            correlation_id = %env.correlation_id, reason, "dead-lettering"
        );
        let topic = self
            .dead_letter_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(env.topic.clone())
            .or_insert_with(|| Name::from((self.dead_letter_topic)(&env.topic)))
            .clone();
        let info = DeadLetter {
            topic,
            reason: reason.clone(),
            attempts,
            service: name.clone(),
        };
        // Boxed: the cold path must not grow every delivery's future.
        match Box::pin(self.bus.dead_letter(d, info)).await {
            Ok(()) => {
                route.metrics.dead_lettered.inc();
                Settled {
                    outcome: Outcome::DeadLettered,
                    attempts,
                    reason: Some(reason),
                    emitted: Emitted::new(),
                }
            }
            Err(e) => Settled {
                outcome: Outcome::Redelivered,
                attempts,
                reason: Some(format!(
                    "{reason}; publishing to the dead-letter topic failed: {e}"
                )),
                emitted: Emitted::new(),
            },
        }
    }
}
