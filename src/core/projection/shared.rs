//! The projection's shared maps: [`SharedMap`], a persistent ordered map whose values are
//! reference-counted, and [`AsBTreeMap`], the rkyv wrapper that archives one exactly as the
//! `BTreeMap` every earlier version stored.
//!
//! Why persistent: a node publishes its projection to readers after every write (read-copy-
//! update, `store::ledger::view`). Cloning a [`SharedMap`] costs one reference count; the
//! writer's next change copies only the path to the entry it changes. Why `Arc` values: a
//! copied path clones the entries beside it, and a reader's answer hands out records without
//! copying them.

use std::ops::ControlFlow;
use std::sync::Arc;

use rkyv::collections::btree_map::{ArchivedBTreeMap, BTreeMapResolver};
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Archive, Deserialize, Place, Serialize};

/// A persistent ordered map with shared values (see the module doc). Iterates in key order,
/// as the `BTreeMap` it replaced; its serde form is that map's.
pub type SharedMap<K, V> = imbl::OrdMap<K, Arc<V>>;

/// Archives a [`SharedMap<K, V>`] as `ArchivedBTreeMap<K::Archived, V::Archived>`: byte for
/// byte what a `BTreeMap<K, V>` with the same entries archives to, so checkpoints and seeds
/// written before the projection shared its maps read back unchanged.
#[derive(Debug)]
pub struct AsBTreeMap;

impl<K, V> ArchiveWith<SharedMap<K, V>> for AsBTreeMap
where
    K: Archive + Ord + Clone,
    K::Archived: Ord,
    V: Archive,
{
    type Archived = ArchivedBTreeMap<K::Archived, V::Archived>;
    type Resolver = BTreeMapResolver;

    fn resolve_with(field: &SharedMap<K, V>, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedBTreeMap::resolve_from_len(field.len(), resolver, out);
    }
}

impl<K, V, S> SerializeWith<SharedMap<K, V>, S> for AsBTreeMap
where
    K: Serialize<S> + Ord + Clone,
    K::Archived: Ord,
    V: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize_with(field: &SharedMap<K, V>, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedBTreeMap::<K::Archived, V::Archived>::serialize_from_ordered_iter::<_, &K, &V, K, V, _>(
            field.iter().map(|(k, v)| (k, &**v)),
            serializer,
        )
    }
}

impl<K, V, D> DeserializeWith<ArchivedBTreeMap<K::Archived, V::Archived>, SharedMap<K, V>, D> for AsBTreeMap
where
    K: Archive + Ord + Clone,
    K::Archived: Deserialize<K, D> + Ord,
    V: Archive,
    V::Archived: Deserialize<V, D>,
    D: Fallible + ?Sized,
{
    fn deserialize_with(
        field: &ArchivedBTreeMap<K::Archived, V::Archived>,
        deserializer: &mut D,
    ) -> Result<SharedMap<K, V>, D::Error> {
        let mut out = Vec::with_capacity(field.len());
        let failed = field.visit(|k, v| {
            let k = match k.deserialize(deserializer) {
                Ok(k) => k,
                Err(e) => return ControlFlow::Break(e),
            };
            match v.deserialize(deserializer) {
                Ok(v) => {
                    out.push((k, Arc::new(v)));
                    ControlFlow::Continue(())
                }
                Err(e) => ControlFlow::Break(e),
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(dense_map(out)),
        }
    }
}

/// A persistent map of `entries` (of two equal keys the later wins, as with inserts), built to fill its
/// B-tree's leaves: the entries are sorted and inserted every other one first, then the rest.
/// Inserted in order, a B-tree that splits a full leaf in half (as imbl's does) leaves every
/// leaf half full; the second pass fills each leaf's gaps without splitting it. So a map read
/// from a checkpoint, or an index rebuilt, takes about two thirds of the memory it would
/// (a fill near 100 % instead of 50 %; a map grown by inserts in random order sits near 70 %).
/// Only the layout depends on the order: the map is the same either way.
pub fn dense_map<K: Ord + Clone, V: Clone>(mut entries: Vec<(K, V)>) -> imbl::OrdMap<K, V> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
    let mut map = imbl::OrdMap::new();
    for (k, v) in entries.iter().step_by(2).chain(entries.iter().skip(1).step_by(2)) {
        map.insert(k.clone(), v.clone());
    }
    map
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
    struct Plain {
        map: BTreeMap<u64, String>,
    }

    #[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, serde::Serialize)]
    struct Shared {
        #[rkyv(with = AsBTreeMap)]
        map: SharedMap<u64, String>,
    }

    /// A map built to fill its leaves holds exactly what inserting the entries in their
    /// order gives (of two equal keys, the later).
    #[test]
    fn a_dense_map_is_the_map_inserts_give() {
        for n in [0u64, 1, 2, 15, 16, 17, 33, 1000, 5000] {
            let entries: Vec<(u64, u64)> = (0..n).map(|i| (i * 7919 % 1009 % (n.max(1) * 3 / 4 + 1), i)).collect();
            let inserted: imbl::OrdMap<u64, u64> = entries.iter().cloned().collect();
            assert_eq!(dense_map(entries), inserted, "{n} entries");
        }
    }

    /// A shared map archives (rkyv) and serializes (serde, BCS: the state digest) to the very
    /// bytes the `BTreeMap` it replaced did, and reads back from them.
    #[test]
    fn archives_and_serializes_as_the_btree_map_it_replaced() {
        for n in [0u64, 1, 5, 6, 100, 1000] {
            let plain = Plain { map: (0..n).map(|i| (i * 7919 % 1009, format!("v{i}"))).collect() };
            let shared = Shared { map: plain.map.iter().map(|(k, v)| (*k, Arc::new(v.clone()))).collect() };
            let a = rkyv::to_bytes::<rkyv::rancor::Error>(&plain).expect("plain");
            let b = rkyv::to_bytes::<rkyv::rancor::Error>(&shared).expect("shared");
            assert_eq!(a.as_slice(), b.as_slice(), "rkyv, {n} entries");
            assert_eq!(bcs::to_bytes(&plain).expect("bcs"), bcs::to_bytes(&shared).expect("bcs"), "bcs, {n} entries");
            let back = rkyv::from_bytes::<Shared, rkyv::rancor::Error>(&a).expect("reads the BTreeMap's archive");
            assert_eq!(back, shared);
        }
    }
}
