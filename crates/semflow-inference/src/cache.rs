//! A bounded content cache for inference results, keyed by a digest of everything that
//! determines the output (model fingerprint, function, instruction, text), with hit/miss
//! counters.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// A 128-bit digest of a cache key's parts; keys never hold document text.
pub type CacheKey = u128;

/// Digest of the parts of a key; parts are length-prefixed so ("ab","c") != ("a","bc").
pub fn cache_key(parts: &[&[u8]]) -> CacheKey {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_le_bytes(first)
}

/// An LRU cache of `capacity` entries; capacity 0 turns it off.
pub struct ContentCache<V> {
    inner: Option<Mutex<LruCache<CacheKey, V>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<V: Clone> ContentCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Looks a key up, counting the hit or miss.
    pub fn get(&self, key: CacheKey) -> Option<V> {
        let found = self
            .inner
            .as_ref()
            .and_then(|m| m.lock().ok().and_then(|mut c| c.get(&key).cloned()));
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: CacheKey, value: V) {
        if let Some(Ok(mut c)) = self.inner.as_ref().map(|m| m.lock()) {
            c.put(key, value);
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .and_then(|m| m.lock().ok().map(|c| c.len()))
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counted() {
        let c = ContentCache::new(2);
        let (a, b, d) = (cache_key(&[b"a"]), cache_key(&[b"b"]), cache_key(&[b"d"]));
        assert_eq!(c.get(a), None::<i32>);
        c.put(a, 1);
        c.put(b, 2);
        c.put(d, 3); // evicts a
        assert_eq!(c.get(a), None);
        assert_eq!(c.get(d), Some(3));
        assert_eq!((c.hits(), c.misses(), c.len()), (1, 2, 2));
        assert_ne!(cache_key(&[b"ab", b"c"]), cache_key(&[b"a", b"bc"]));
        let off = ContentCache::new(0);
        off.put(a, 1);
        assert_eq!(off.get(a), None);
    }
}
