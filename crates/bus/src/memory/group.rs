//! Consumer groups: their members, and the assignment of partitions to
//! members, redone when a member joins or leaves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use choreo_core::{Name, Settle, Settlement, StartFrom, SubscribeOptions};
use tokio::sync::Notify;

use super::Inner;
use super::partition::{Cursor, Partition};

/// A group member (one subscription).
pub(super) struct Member {
    pub(super) id: u64,
    pub(super) notify: Notify,
    /// The partitions assigned to this member, with the handle deliveries settle through.
    pub(super) assignment: Mutex<Vec<Arc<CursorHandle>>>,
    /// Bumped on every assignment change, so a subscription can drop prefetched deliveries.
    pub(super) epoch: AtomicU64,
    pub(super) closed: AtomicBool,
}

/// Settles deliveries of one partition for one group.
pub(super) struct CursorHandle {
    pub(super) partition: Arc<Partition>,
    pub(super) group: Arc<str>,
}

pub(super) struct GroupState {
    pub(super) members: Vec<(Arc<Member>, Vec<Name>)>,
}

impl Inner {
    /// Recomputes the assignment of every topic `group` consumes.
    pub(super) fn rebalance(
        &self,
        group: &Arc<str>,
        groups: &HashMap<Arc<str>, GroupState>,
        topics: &[Name],
    ) {
        let members: &[(Arc<Member>, Vec<Name>)] = groups.get(group).map_or(&[], |g| &g.members);
        let mut new_assignments: HashMap<u64, Vec<Arc<CursorHandle>>> =
            members.iter().map(|(m, _)| (m.id, Vec::new())).collect();
        // Every topic any member consumes, plus the ones the leaving/joining member had.
        let mut all_topics: Vec<Name> = members
            .iter()
            .flat_map(|(_, t)| t.iter().cloned())
            .collect();
        all_topics.extend(topics.iter().cloned());
        all_topics.sort();
        all_topics.dedup();
        for topic_name in &all_topics {
            let topic = self.topic(topic_name);
            let subscribers: Vec<&Arc<Member>> = members
                .iter()
                .filter(|(_, t)| t.contains(topic_name))
                .map(|(m, _)| m)
                .collect();
            for p in &topic.partitions {
                let owner = if subscribers.is_empty() {
                    None
                } else {
                    Some(subscribers[p.index as usize % subscribers.len()].clone())
                };
                let mut st = p.lock();
                let Some(cursor) = st.cursors.iter_mut().find(|c| c.group == *group) else {
                    continue;
                };
                let same = match (&cursor.owner, &owner) {
                    (Some(a), Some(b)) => a.id == b.id,
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    cursor.rewind();
                    cursor.owner = owner.clone();
                }
                // A group that lost its members no longer holds events back:
                // a partition it kept past its bound can shrink now.
                p.trim(&mut st);
                drop(st);
                if let Some(o) = owner {
                    new_assignments
                        .get_mut(&o.id)
                        .expect("owner is a member")
                        .push(Arc::new(CursorHandle {
                            partition: p.clone(),
                            group: group.clone(),
                        }));
                    o.notify.notify_one();
                }
                // A group that lost its members no longer holds events back.
                p.room.notify_waiters();
            }
        }
        for (m, _) in members {
            let list = new_assignments.remove(&m.id).unwrap_or_default();
            *m.assignment.lock().unwrap_or_else(|e| e.into_inner()) = list;
            m.epoch.fetch_add(1, Ordering::AcqRel);
            m.notify.notify_one();
        }
    }

    /// Joins `options.group`; returns the member and the group's shared name.
    pub(super) fn join(&self, options: &SubscribeOptions) -> (Arc<Member>, Arc<str>) {
        // Every member of a group shares one name, so cursors are found by
        // pointer (`Arc`'s equality checks the pointer first).
        let group: Arc<str> = self
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_key_value(options.group.as_str())
            .map_or_else(|| Arc::from(options.group.as_str()), |(k, _)| k.clone());
        let topics: Vec<Name> = options
            .topics
            .iter()
            .map(|t| Name::from(t.as_str()))
            .collect();
        // Make sure the group has a cursor in every partition of its topics.
        for t in &topics {
            let topic = self.topic(t);
            for p in &topic.partitions {
                let mut st = p.lock();
                if !st.cursors.iter().any(|c| c.group == group) {
                    let start = match options.start {
                        StartFrom::Earliest => st.base,
                        StartFrom::Latest => st.end(),
                    };
                    st.cursors.push(Cursor {
                        group: group.clone(),
                        committed: start,
                        next: start,
                        window: VecDeque::new(),
                        pending: VecDeque::new(),
                        owner: None,
                        generation: 0,
                    });
                }
            }
        }
        let member = Arc::new(Member {
            id: self.next_member.fetch_add(1, Ordering::Relaxed),
            notify: Notify::new(),
            assignment: Mutex::new(Vec::new()),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups
            .entry(group.clone())
            .or_insert_with(|| GroupState {
                members: Vec::new(),
            })
            .members
            .push((member.clone(), topics.clone()));
        self.rebalance(&group, &groups, &topics);
        (member, group)
    }

    pub(super) fn leave(&self, group: &Arc<str>, member: &Arc<Member>) {
        if member.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut topics = Vec::new();
        if let Some(g) = groups.get_mut(group)
            && let Some(i) = g.members.iter().position(|(m, _)| m.id == member.id)
        {
            topics = g.members.remove(i).1;
        }
        self.rebalance(group, &groups, &topics);
        member
            .assignment
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        member.epoch.fetch_add(1, Ordering::AcqRel);
        member.notify.notify_one();
        // A group without members no longer holds `settled` back.
        self.quiet.progressed();
    }
}

impl Settle for CursorHandle {
    fn settle(&self, _partition: u32, offset: u64, token: u64, settlement: Settlement) {
        self.partition
            .settle(&self.group, offset, token, settlement);
    }
}
