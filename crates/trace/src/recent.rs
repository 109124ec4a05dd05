//! What the tracer holds for a viewer: the flows it finished last, and a search window over the records it read last.
//!
//! Both are bounded by the tracer's configuration
//! ([`TracerConfig::recent_flows`](crate::TracerConfig::recent_flows),
//! [`TracerConfig::search_bytes`](crate::TracerConfig::search_bytes)) and
//! off by default: a viewer (`choreo trace --ui`) reads them through the
//! tracer instead of keeping a copy of every flow.

use std::collections::VecDeque;

use choreo_core::{ContentType, Envelope, EventId};

use crate::find::Query;
use crate::flow::FlowTrace;

/// The flows finished last, whole, oldest first; at most `cap`.
#[derive(Debug, Default)]
pub(crate) struct RecentFlows {
    cap: usize,
    flows: VecDeque<FlowTrace>,
}

impl RecentFlows {
    pub(crate) fn new(cap: usize) -> Self {
        RecentFlows {
            cap,
            flows: VecDeque::new(),
        }
    }

    /// Holds `flow`, dropping the oldest held beyond the cap.
    pub(crate) fn push(&mut self, flow: FlowTrace) {
        if self.cap == 0 {
            return;
        }
        if self.flows.len() == self.cap {
            self.flows.pop_front();
        }
        self.flows.push_back(flow);
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &FlowTrace> {
        self.flows.iter()
    }

    /// The newest held flow with this correlation id.
    pub(crate) fn get(&self, id: &EventId) -> Option<&FlowTrace> {
        self.flows.iter().rev().find(|f| &f.correlation_id == id)
    }
}

/// What a search needs of one event: its ids, its key and its JSON payload.
#[derive(Debug)]
struct Searchable {
    correlation_id: EventId,
    id: EventId,
    key: Option<Box<[u8]>>,
    json: Option<Box<[u8]>>,
}

impl Searchable {
    /// Bytes it holds, ids counted at their fixed size.
    fn size(&self) -> usize {
        std::mem::size_of::<Searchable>()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.json.as_ref().map_or(0, |j| j.len())
    }
}

/// A payload longer than this is not held for search (its ids and key are):
/// one large record must not push out hundreds of small ones.
const MAX_SEARCH_PAYLOAD: usize = 16 * 1024;

/// The events read last, within a byte budget, for [`Query`]: what lets a
/// viewer find a flow by record key or payload field after its records were
/// folded (the tracer holds no payload otherwise).
#[derive(Debug, Default)]
pub(crate) struct SearchWindow {
    budget: usize,
    used: usize,
    items: VecDeque<Searchable>,
}

impl SearchWindow {
    pub(crate) fn new(budget: usize) -> Self {
        SearchWindow {
            budget,
            used: 0,
            items: VecDeque::new(),
        }
    }

    /// Holds what a search needs of `env` (an event with attributed ids).
    pub(crate) fn push(&mut self, env: &Envelope) {
        if self.budget == 0 {
            return;
        }
        let json = (env.content_type == ContentType::Json && env.data.len() <= MAX_SEARCH_PAYLOAD)
            .then(|| Box::<[u8]>::from(&env.data[..]));
        let item = Searchable {
            correlation_id: env.correlation_id.clone(),
            id: env.id.clone(),
            key: env.key.as_deref().map(Box::<[u8]>::from),
            json,
        };
        self.used += item.size();
        self.items.push_back(item);
        while self.used > self.budget {
            match self.items.pop_front() {
                Some(old) => self.used -= old.size(),
                None => break,
            }
        }
    }

    /// The JSON payloads held of the events of flow `correlation_id`, by event id.
    pub(crate) fn payloads(&self, correlation_id: &EventId) -> Vec<(EventId, String)> {
        self.items
            .iter()
            .filter(|s| &s.correlation_id == correlation_id)
            .filter_map(|s| {
                let json = s.json.as_deref()?;
                Some((s.id.clone(), String::from_utf8_lossy(json).into_owned()))
            })
            .collect()
    }

    /// Correlation ids of the events that match `query`, newest first, each
    /// once, at most `max`.
    pub(crate) fn find(&self, query: &Query, max: usize, out: &mut Vec<EventId>) {
        for s in self.items.iter().rev() {
            if out.len() >= max {
                return;
            }
            if out.contains(&s.correlation_id) {
                continue;
            }
            if query.matches_parts(
                &s.id,
                Some(&s.correlation_id),
                s.key.as_deref(),
                s.json.as_deref(),
            ) {
                out.push(s.correlation_id.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_within_its_budget_and_finds_newest_first() {
        let mut w = SearchWindow::new(1000);
        let mut last = None;
        for i in 0..100 {
            let e = Envelope::new("OrderPlaced", "orders", format!(r#"{{"order_id":{i}}}"#));
            w.push(&e);
            last = Some(e.correlation_id.clone());
        }
        assert!(w.used <= 1000, "{} bytes held", w.used);
        assert!(w.items.len() < 100, "the oldest were dropped");
        let mut found = Vec::new();
        w.find(&Query::parse("order_id=99").unwrap(), 10, &mut found);
        assert_eq!(found, vec![last.unwrap()]);
        found.clear();
        w.find(&Query::parse("order_id=0").unwrap(), 10, &mut found);
        assert!(found.is_empty(), "order 0 left the window");
    }

    #[test]
    fn off_by_default() {
        let mut w = SearchWindow::default();
        w.push(&Envelope::new("A", "a", "{}"));
        assert!(w.items.is_empty());
        let r = RecentFlows::default();
        assert!(r.iter().next().is_none());
    }
}
