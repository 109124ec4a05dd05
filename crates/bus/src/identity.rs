//! A small cache of values found by the identity of names: where their text
//! lives, not what it says. Reading it takes no lock.
//!
//! Hot paths look the same few names up for every event: a publish finds its
//! topic, a published event its counter. The names are nearly always clones
//! of one name, or the same `&'static str`, so their text is at one address.
//! A lookup here compares that address; a table behind a lock (taken for
//! every read, with the text hashed and compared) stays the place of record,
//! and fills this cache on a miss.
//!
//! The cache keeps a clone of every name it holds, so the text at a cached
//! address cannot be freed and another name's put there: the same address
//! and length mean the same text. Slots are never emptied: a caller that
//! makes a new name for every event (a topic from a `String` each time) fills
//! the cache, and the names it has not cached are then looked up in the table
//! of record, as without it. Name things once and clone the name.

use std::sync::OnceLock;

use choreo_core::Name;

/// Slots probed from a key's first slot before giving up.
const PROBES: usize = 4;

fn address(name: &Name) -> (usize, usize) {
    let s = name.as_str();
    (s.as_ptr() as usize, s.len())
}

/// A hash of where `name`'s text is.
pub(crate) fn of_name(name: &Name) -> u64 {
    let (ptr, len) = address(name);
    (ptr as u64) ^ ((len as u64) << 48)
}

/// A hash of where the texts of both names are.
pub(crate) fn of_pair(a: &Name, b: &Name) -> u64 {
    of_name(a) ^ of_name(b).rotate_left(29)
}

/// Whether `a` and `b` are the same text at the same address.
pub(crate) fn same(a: &Name, b: &Name) -> bool {
    address(a) == address(b)
}

/// `N` slots, each filled at most once; a key that finds no free slot among
/// the [`PROBES`] it may use is simply not cached. Keys are found by their
/// identity hash ([`of_name`], [`of_pair`]) and compared with [`same`].
pub(crate) struct IdentityCache<K, V, const N: usize> {
    slots: [OnceLock<(K, V)>; N],
}

impl<K, V, const N: usize> IdentityCache<K, V, N> {
    const ASSERT_POWER_OF_TWO: () = assert!(N.is_power_of_two());

    pub(crate) fn new() -> Self {
        let () = Self::ASSERT_POWER_OF_TWO;
        IdentityCache {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn slots_of(identity: u64) -> impl Iterator<Item = usize> {
        // Addresses are multiples of small powers of two: mix the high bits in.
        let first = (identity.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        (0..PROBES).map(move |i| (first + i) & (N - 1))
    }

    /// The value cached under `identity` for the key `is_key` accepts.
    pub(crate) fn get(&self, identity: u64, is_key: impl Fn(&K) -> bool) -> Option<&V> {
        for i in Self::slots_of(identity) {
            match self.slots[i].get() {
                Some((k, v)) if is_key(k) => return Some(v),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    /// Caches `value` for `key` under `identity`, if a slot is free.
    pub(crate) fn insert(&self, identity: u64, key: K, value: V, is_key: impl Fn(&K) -> bool) {
        let mut entry = (key, value);
        for i in Self::slots_of(identity) {
            let slot = &self.slots[i];
            if let Some((k, _)) = slot.get() {
                if is_key(k) {
                    return;
                }
                continue;
            }
            match slot.set(entry) {
                Ok(()) => return,
                // Another thread filled it first, maybe with this key.
                Err(back) => {
                    if slot.get().is_some_and(|(k, _)| is_key(k)) {
                        return;
                    }
                    entry = back;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(cache: &'a IdentityCache<Name, u32, 8>, name: &Name) -> Option<&'a u32> {
        cache.get(of_name(name), |k| same(k, name))
    }

    fn put(cache: &IdentityCache<Name, u32, 8>, name: &Name, v: u32) {
        cache.insert(of_name(name), name.clone(), v, |k| same(k, name));
    }

    #[test]
    fn finds_a_name_by_its_address_only() {
        let cache = IdentityCache::new();
        let shared = Name::from("orders");
        assert_eq!(get(&cache, &shared), None);
        put(&cache, &shared, 1);
        assert_eq!(get(&cache, &shared.clone()), Some(&1));
        // The same text elsewhere is another key (the caller's table answers it).
        let other = Name::from("orders");
        assert_eq!(get(&cache, &other), None);
        put(&cache, &other, 2);
        assert_eq!(
            (get(&cache, &shared), get(&cache, &other)),
            (Some(&1), Some(&2))
        );
        let fixed = Name::from_static("payments");
        put(&cache, &fixed, 3);
        assert_eq!(get(&cache, &Name::from_static("payments")), Some(&3));
    }

    #[test]
    fn a_full_cache_leaves_new_keys_out() {
        let cache: IdentityCache<(Name, Name), usize, 4> = IdentityCache::new();
        let keys: Vec<(Name, Name)> = (0..6)
            .map(|i| (Name::from(format!("t{i}")), Name::from("type")))
            .collect();
        let found = |(a, b): &(Name, Name)| {
            cache
                .get(of_pair(a, b), |k| same(&k.0, a) && same(&k.1, b))
                .copied()
        };
        for (i, (a, b)) in keys.iter().enumerate() {
            cache.insert(of_pair(a, b), (a.clone(), b.clone()), i, |k| {
                same(&k.0, a) && same(&k.1, b)
            });
        }
        let cached: Vec<usize> = keys.iter().filter_map(found).collect();
        assert_eq!(cached.len(), 4, "{cached:?}");
        assert!(cached.iter().all(|&i| found(&keys[i]) == Some(i)));
    }
}
