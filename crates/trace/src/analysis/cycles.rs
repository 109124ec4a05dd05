//! Loops in a flow: `cycle-bound`, an event type repeating along one causal path more often than the bound.

use super::{Ctx, Raw, Scratch};
use crate::finding::Rule;
use crate::model::Sym;
use crate::store::FlowState;
use crate::util::FastMap;

/// Reports, per event type repeating past the configured cycle bound, its
/// deepest repetition along one path.
pub(crate) fn check(ctx: &Ctx<'_>, s: &Scratch, f: &FlowState, findings: &mut Vec<Raw>) {
    let bound = ctx.config.cycle_bound;
    let n = f.events.len();
    if n as u64 <= u64::from(bound) {
        return;
    }
    let mut per_type: FastMap<Sym, u32> = FastMap::default();
    for e in &f.events {
        *per_type.entry(e.ty).or_default() += 1;
    }
    if per_type.values().all(|&c| c <= bound) {
        return;
    }
    // Per repeating type, the deepest repetition along one path.
    let mut worst: Vec<(Sym, u32, usize)> = Vec::new();
    for (i, e) in f.events.iter().enumerate() {
        if per_type[&e.ty] <= bound {
            continue;
        }
        let mut count = 1u32;
        let mut p = s.parent[i];
        let mut steps = 0usize;
        while p != u32::MAX && steps <= n {
            if f.events[p as usize].ty == e.ty {
                count += 1;
            }
            p = s.parent[p as usize];
            steps += 1;
        }
        match worst.iter_mut().find(|w| w.0 == e.ty) {
            Some(w) if w.1 < count => *w = (e.ty, count, i),
            Some(_) => {}
            None => worst.push((e.ty, count, i)),
        }
    }
    for (ty, count, i) in worst {
        if count <= bound {
            continue;
        }
        let e = &f.events[i];
        findings.push(Raw {
            rule: Rule::CycleBound,
            service: e.source,
            event_type: ty,
            event: Some(i as u32),
            time: e.time,
            message: format!(
                "'{}' occurs {count} times along one causal path (bound {bound})",
                ctx.syms.name(ty)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::analysis::testing::Fixture;
    use crate::finding::Rule;

    /// `s` reacts to its own `A` with another `A`, forever.
    const LOOP: &str = "name: t\nevents:\n  A: {topic: a}\n  R: {topic: r}\nservices:\n  s:\n    emits: [A, R]\n    on:\n      A: {emit: [A]}\n      R: {emit: [A]}\nflows:\n  f: {starts_with: A, ends_with: [A]}\n  g: {starts_with: R, ends_with: [A]}\n";

    #[test]
    fn a_type_repeating_along_one_path_past_the_bound() {
        let mut f = Fixture::new(LOOP);
        f.event("a0", "A", "s", None, 0);
        let mut cause = "a0".to_owned();
        for i in 1..=4 {
            let label = format!("a{i}");
            f.event(&label, "A", "s", Some(&cause), i);
            cause = label;
        }
        let j = f.judge(10);
        assert_eq!(
            j.findings,
            [(Rule::CycleBound, "s".into(), "A".into(), Some("a4".into()))]
        );
        assert!(
            j.messages[0].contains("occurs 5 times"),
            "{}",
            j.messages[0]
        );
        f.config.cycle_bound = 5;
        assert!(f.judge(10).findings.is_empty());
    }

    #[test]
    fn repetitions_on_separate_branches_do_not_add_up() {
        let mut f = Fixture::new(LOOP);
        f.event("root", "R", "s", None, 0);
        for i in 0..5 {
            f.event(&format!("a{i}"), "A", "s", Some("root"), i);
        }
        assert!(f.judge(10).of(Rule::CycleBound).is_empty());
    }
}
