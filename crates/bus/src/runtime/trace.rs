//! Spans: a `tracing` span per handling always, and with the `otel` feature an
//! OpenTelemetry CONSUMER span per handling and a PRODUCER span per publish,
//! following the OpenTelemetry messaging conventions, with W3C trace context
//! carried in the envelope's `traceparent`/`tracestate`.

use std::future::Future;

use choreo_core::Envelope;

/// The spans of handling one delivery.
#[derive(Clone)]
pub(crate) struct HandleSpan {
    pub(crate) span: tracing::Span,
    #[cfg(feature = "otel")]
    cx: opentelemetry::Context,
}

impl HandleSpan {
    /// Starts the spans for `service` handling `env` as part of `group`.
    pub(crate) fn start(
        env: &Envelope,
        service: &str,
        group: &str,
        partition: u32,
        offset: u64,
    ) -> Self {
        let span = tracing::debug_span!(
            "choreo.process",
            service,
            event_type = %env.event_type,
            topic = %env.topic,
            partition,
            offset,
            event_id = %env.id,
            correlation_id = %env.correlation_id,
        );
        #[cfg(feature = "otel")]
        let cx = otel::consumer(env, service, group, partition, offset);
        #[cfg(not(feature = "otel"))]
        let _ = group;
        HandleSpan {
            span,
            #[cfg(feature = "otel")]
            cx,
        }
    }

    /// True when nothing records these spans, so instrumenting is pointless.
    pub(crate) fn is_quiet(&self) -> bool {
        self.span.is_disabled() && !cfg!(feature = "otel")
    }

    /// Runs `fut` inside the spans.
    pub(crate) fn instrument<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        use tracing::Instrument;
        let fut = fut.instrument(self.span.clone());
        #[cfg(feature = "otel")]
        let fut = opentelemetry::trace::FutureExt::with_context(fut, self.cx.clone());
        fut
    }

    /// Stamps an emitted event with the trace context of a PRODUCER span that is
    /// a child of this handling. Returns the span, to end once published.
    /// Without the `otel` feature the envelope is left as it is (not copied,
    /// even when shared).
    pub(crate) fn produce(&self, env: &mut std::sync::Arc<Envelope>, service: &str) -> ProduceSpan {
        #[cfg(feature = "otel")]
        {
            otel::producer(&self.cx, std::sync::Arc::make_mut(env), service)
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (env, service);
            ProduceSpan {}
        }
    }

    /// Ends the handling with its outcome.
    pub(crate) fn finish(self, outcome: &str, error: Option<&str>) {
        #[cfg(feature = "otel")]
        otel::finish(&self.cx, outcome, error);
        #[cfg(not(feature = "otel"))]
        let _ = (outcome, error);
        drop(self.span);
    }
}

/// A PRODUCER span, ended when the publish settles.
pub(crate) struct ProduceSpan {
    #[cfg(feature = "otel")]
    cx: opentelemetry::Context,
}

impl ProduceSpan {
    /// Starts a PRODUCER span for a flow's first event published outside a
    /// handler (a child of the current OpenTelemetry context, if any).
    pub(crate) fn root(env: &mut Envelope, service: &str) -> ProduceSpan {
        #[cfg(feature = "otel")]
        {
            otel::producer(&opentelemetry::Context::current(), env, service)
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (env, service);
            ProduceSpan {}
        }
    }

    /// Ends the span.
    pub(crate) fn end(self, error: Option<&str>) {
        #[cfg(feature = "otel")]
        otel::finish(&self.cx, "published", error);
        #[cfg(not(feature = "otel"))]
        let _ = error;
    }
}

/// W3C trace-context text (`traceparent`): parse and format.
#[cfg(feature = "otel")]
pub(crate) mod w3c {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    /// Parses `traceparent` (and `tracestate`) into a remote span context.
    pub(crate) fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace_id.len() != 32
            || span_id.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let state = tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(flags & 1),
            true,
            state,
        ))
    }

    /// Formats a span context as `traceparent` and `tracestate`.
    pub(crate) fn format(sc: &SpanContext) -> Option<(String, Option<String>)> {
        if !sc.is_valid() {
            return None;
        }
        let tp = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let ts = sc.trace_state().header();
        Some((tp, if ts.is_empty() { None } else { Some(ts) }))
    }
}

#[cfg(feature = "otel")]
mod otel {
    use choreo_core::Envelope;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
    use opentelemetry::{Context, KeyValue, global};

    use super::ProduceSpan;

    const TRACER: &str = "choreo";

    pub(super) fn consumer(
        env: &Envelope,
        service: &str,
        group: &str,
        partition: u32,
        offset: u64,
    ) -> Context {
        let parent = match env
            .traceparent
            .as_deref()
            .and_then(|tp| super::w3c::parse(tp, env.tracestate.as_deref()))
        {
            Some(sc) => Context::new().with_remote_span_context(sc),
            None => Context::new(),
        };
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(format!("process {}", env.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(vec![
                KeyValue::new("messaging.system", "choreo"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new("messaging.destination.name", env.topic.to_string()),
                KeyValue::new("messaging.destination.partition.id", partition.to_string()),
                KeyValue::new("messaging.consumer.group.name", group.to_owned()),
                KeyValue::new("messaging.message.id", env.id.to_string()),
                KeyValue::new("messaging.kafka.offset", offset as i64),
                KeyValue::new("choreo.event_type", env.event_type.to_string()),
                KeyValue::new("choreo.correlation_id", env.correlation_id.to_string()),
                KeyValue::new("choreo.service", service.to_owned()),
            ])
            .start_with_context(&tracer, &parent);
        parent.with_span(span)
    }

    pub(super) fn producer(parent: &Context, env: &mut Envelope, service: &str) -> ProduceSpan {
        let tracer = global::tracer(TRACER);
        let span = tracer
            .span_builder(format!("send {}", env.topic))
            .with_kind(SpanKind::Producer)
            .with_attributes(vec![
                KeyValue::new("messaging.system", "choreo"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.destination.name", env.topic.to_string()),
                KeyValue::new("messaging.message.id", env.id.to_string()),
                KeyValue::new("choreo.event_type", env.event_type.to_string()),
                KeyValue::new("choreo.correlation_id", env.correlation_id.to_string()),
                KeyValue::new("choreo.service", service.to_owned()),
            ])
            .start_with_context(&tracer, parent);
        let cx = parent.with_span(span);
        if let Some((tp, ts)) = super::w3c::format(&cx.span().span_context().clone()) {
            env.traceparent = Some(tp);
            env.tracestate = ts;
        }
        ProduceSpan { cx }
    }

    pub(super) fn finish(cx: &Context, outcome: &str, error: Option<&str>) {
        let span = cx.span();
        span.set_attribute(KeyValue::new("choreo.outcome", outcome.to_owned()));
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end();
    }
}
