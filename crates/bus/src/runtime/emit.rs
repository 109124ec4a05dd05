//! Publishing what a handler emitted, once its attempt succeeded: each event
//! in a PRODUCER span, counted, and the error that decides the delivery when
//! some fail.

use std::sync::Arc;

use choreo_core::{Bus, Envelope, EventId};

use super::context::Outbox;
use super::handler::is_refused;
use super::running::Runtime;
use super::trace::HandleSpan;

impl<B: Bus> Runtime<B> {
    /// Publishes one emitted event, in a PRODUCER span, and counts it.
    /// Returns its id.
    pub(super) async fn publish_one(
        &self,
        mut env: Arc<Envelope>,
        span: &HandleSpan,
    ) -> Result<EventId, choreo_core::Error> {
        let name = &self.shared.name;
        let produce = span.produce(&mut env, name);
        let id = env.id.clone();
        let (topic, event_type) = (env.topic.clone(), env.event_type.clone());
        match self.bus.publish_shared(env).await {
            Ok(()) => {
                produce.end(None);
                self.published.inc(&topic, &event_type);
                Ok(id)
            }
            Err(e) => {
                produce.end(Some(&e.to_string()));
                self.published.failed(&topic);
                Err(e)
            }
        }
    }

    /// Publishes several emitted events at once (a backend that pipelines
    /// sends them together). Returns their ids, or the error that decides the
    /// delivery: a refusal if there is one (the next delivery would meet it
    /// again), saying how many of the others were published; else the first.
    pub(super) async fn publish_all(
        &self,
        emitted: Outbox,
        span: &HandleSpan,
    ) -> Result<Vec<EventId>, choreo_core::Error> {
        let n = emitted.len();
        let futures = emitted.into_iter().map(|env| self.publish_one(env, span));
        let mut ids = Vec::with_capacity(n);
        let mut failed: Option<choreo_core::Error> = None;
        for result in futures_util::future::join_all(futures).await {
            match result {
                Ok(id) => ids.push(id),
                Err(e) => {
                    if failed
                        .as_ref()
                        .is_none_or(|f| is_refused(&e) && !is_refused(f))
                    {
                        failed = Some(e);
                    }
                }
            }
        }
        match failed {
            None => Ok(ids),
            Some(choreo_core::Error::Refused {
                event_type,
                topic,
                reason,
            }) if !ids.is_empty() => Err(choreo_core::Error::Refused {
                event_type,
                topic,
                reason: format!(
                    "{reason} ({} of the {n} events emitted with it were published)",
                    ids.len()
                ),
            }),
            Some(e) => Err(e),
        }
    }
}
