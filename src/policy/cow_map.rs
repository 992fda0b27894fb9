//! [`CowMap`]: a hash map whose copy costs next to nothing, for the tables a reload
//! derives from the served snapshot's (the scope index, the catalog of ids).
//!
//! The entries are spread over many small tables by hash, each shared behind an `Arc`:
//! a copy shares every table, and a change to the copy copies only the tables it touches
//! (about [`SHARD_ENTRIES`] entries each). So deriving the next snapshot's table costs
//! what changed, not what the table holds, while a lookup is one hash and one small
//! table's probe, and memory stays that of plain hash tables (a persistent trie spent
//! about a sixth more of the server's memory on its sparse nodes).

use std::{
    borrow::Borrow,
    hash::{BuildHasher, Hash},
    sync::Arc,
};

use foldhash::fast::{FixedState, RandomState};

use super::FastMap;

/// Entries a table holds on average once the map is resharded for its size.
const SHARD_ENTRIES: usize = 64;

/// Most tables a map is spread over.
const MAX_SHARDS: usize = 1 << 16;

/// A hash map with cheap copies; see the module documentation.
#[derive(Clone)]
pub struct CowMap<K, V> {
    shards: Arc<[Arc<FastMap<K, V>>]>,
    /// Picks a key's table (its own seed, so that it does not follow the tables' hashes).
    pick: FixedState,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        Self {
            shards: Arc::from([Arc::new(FastMap::default())]),
            pick: FixedState::with_seed(RandomState::default().hash_one(0u8)),
            len: 0,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for CowMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowMap")
            .field("len", &self.len)
            .field("shards", &self.shards.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    /// The table `key` is in.
    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The number of tables is a power of two.
        (self.pick.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    /// The value under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Number of entries.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(|shard| shard.keys())
    }

    /// The table `key` is in, for changing (copied first if a copy of the map shares it).
    fn shard_mut(&mut self, key: &K) -> &mut FastMap<K, V> {
        let at = self.shard_of(key);
        Arc::make_mut(&mut unique(&mut self.shards)[at])
    }

    /// Puts `value` under `key`, giving back the value it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.shard_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
            self.reshard_if_outgrown();
        }
        old
    }

    /// Takes `key` out, giving back its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        if !self.contains_key(key) {
            // Nothing to change: no table is copied.
            return None;
        }
        let old = self.shard_mut(key).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value under `key`, for changing (its table copied first if shared).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        self.shard_mut(key).get_mut(key)
    }

    /// Spreads the entries over more tables once they average four times
    /// [`SHARD_ENTRIES`] (a map built up from empty grows this way; its first copies
    /// then share tables of the intended size). Fewer entries later keep the tables.
    fn reshard_if_outgrown(&mut self) {
        let shards = self.shards.len();
        if self.len <= shards * SHARD_ENTRIES * 4 || shards >= MAX_SHARDS {
            return;
        }
        let wanted = (self.len / SHARD_ENTRIES)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        let mut tables: Vec<FastMap<K, V>> = (0..wanted)
            .map(|_| FastMap::with_capacity_and_hasher(SHARD_ENTRIES, Default::default()))
            .collect();
        for shard in self.shards.iter() {
            for (key, value) in shard.iter() {
                let at = (self.pick.hash_one(key) as usize) & (wanted - 1);
                tables[at].insert(key.clone(), value.clone());
            }
        }
        self.shards = tables.into_iter().map(Arc::new).collect();
    }
}

/// `Arc::make_mut` for a shared slice: copies the slice (its `Arc`s, not the tables)
/// when another map shares it.
fn unique<T: Clone>(shards: &mut Arc<[T]>) -> &mut [T] {
    if Arc::get_mut(shards).is_none() {
        *shards = shards.iter().cloned().collect();
    }
    Arc::get_mut(shards).expect("just made unique")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_untouched_by_changes_to_the_map_it_was_copied_from() {
        let mut map: CowMap<u32, u32> = CowMap::default();
        for i in 0..10_000 {
            map.insert(i, i);
        }
        assert!(map.shards.len() > 1, "resharded as it grew");
        let copy = map.clone();
        for i in 0..10_000 {
            if i % 3 == 0 {
                map.remove(&i);
            } else if let Some(v) = map.get_mut(&i) {
                *v += 1;
            }
        }
        map.insert(20_000, 1);
        assert_eq!(copy.len(), 10_000);
        assert_eq!(map.len(), 10_000 - 3334 + 1);
        for i in 0..10_000 {
            assert_eq!(copy.get(&i), Some(&i));
            let expected = (i % 3 != 0).then_some(i + 1);
            assert_eq!(map.get(&i).copied(), expected);
        }
        assert_eq!(map.get(&20_000), Some(&1));
        assert_eq!(copy.get(&20_000), None);
        assert_eq!(map.keys().count(), map.len());
    }

    #[test]
    fn changing_a_copy_copies_only_the_tables_it_touches() {
        let mut map: CowMap<u32, u32> = CowMap::default();
        for i in 0..100_000 {
            map.insert(i, i);
        }
        let mut copy = map.clone();
        copy.insert(7, 70);
        copy.remove(&8);
        let shared = map
            .shards
            .iter()
            .zip(copy.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(
            shared >= map.shards.len() - 2,
            "{shared} of {}",
            map.shards.len()
        );
        assert_eq!(map.get(&7), Some(&7));
        assert_eq!(copy.get(&7), Some(&70));
        assert_eq!(map.get(&8), Some(&8));
        assert_eq!(copy.get(&8), None);
    }
}
