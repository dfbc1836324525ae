//! The content cache for inference results. One store per engine holds every model's
//! embeddings and rerank scores under one byte budget (moka, each entry weighed by its bytes);
//! keys are a digest of everything that determines an output (task, model identity, truncation,
//! instruction, text), so models share the budget without sharing answers. Each service counts
//! its own hits and misses.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserializer, Visitor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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

/// Bytes an entry costs beyond its value: the key and the cache's own bookkeeping for it
/// (hash-table slot, access-order node, the value's Arc). Measured with heaptrack in a
/// `semflow run` worker (BENCHMARKS §7, session 17): moka's allocations came to ~300 bytes per
/// entry, about as much as a 64-dim vector itself.
pub const ENTRY_OVERHEAD: u64 = 320;

/// The cache budget of a machine with `memory` bytes: 1/32 of it, at least 32 MiB and at most
/// 1 GiB (768 MiB on a 24 GiB machine; 100,000 vectors of 1024 dims take ~420 MiB).
pub fn budget_for_memory(memory: u64) -> u64 {
    (memory / 32).clamp(32 << 20, 1 << 30)
}

/// This machine's memory: the cgroup's limit where it is lower than the physical memory.
fn machine_memory() -> u64 {
    static MEMORY: OnceLock<u64> = OnceLock::new();
    *MEMORY.get_or_init(|| {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        let physical = system.total_memory();
        match system.cgroup_limits() {
            Some(limits) if limits.total_memory > 0 => physical.min(limits.total_memory),
            _ => physical,
        }
    })
}

/// How many bytes the content cache may hold: `--cache-size 512MiB`, or 0 for no cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSize(pub u64);

impl CacheSize {
    /// The default: sized to this machine's memory ([`budget_for_memory`]).
    pub fn for_this_machine() -> Self {
        Self(budget_for_memory(machine_memory()))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for CacheSize {
    type Err = Error;

    /// `512MiB`, `1.5 GiB`, `800MB`, or `0` / `off` for no cache. A bare number other than 0 is
    /// refused: it used to count entries, and as bytes it would silently make a tiny cache.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "0" || s.eq_ignore_ascii_case("off") {
            return Ok(Self(0));
        }
        let refuse = || {
            Error::InvalidArgument(format!(
                "--cache-size takes a size with a unit (for example 512MiB or 2GiB), or 0 to turn \
                 the cache off; got '{s}'"
            ))
        };
        if !s.chars().any(|c| c.is_ascii_alphabetic()) {
            return Err(refuse());
        }
        s.parse::<bytesize::ByteSize>()
            .map(|b| Self(b.as_u64()))
            .map_err(|_| refuse())
    }
}

impl std::fmt::Display for CacheSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

/// A config file's `cache_size`: a string as the flag takes, or the number 0.
impl<'de> serde::Deserialize<'de> for CacheSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Size;
        impl Visitor<'_> for Size {
            type Value = CacheSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"512MiB\", or 0")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<CacheSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<CacheSize, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<CacheSize, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(Size)
    }
}

/// A cached result.
#[derive(Debug, Clone)]
pub enum Cached {
    Vector(Arc<[f32]>),
    Score(f32),
}

impl Cached {
    /// What the entry costs the budget.
    fn weight(&self) -> u32 {
        let value = match self {
            Cached::Vector(v) => std::mem::size_of_val::<[f32]>(v) as u64,
            Cached::Score(_) => 4,
        };
        u32::try_from(value + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// A result type the cache holds.
pub trait CacheValue: Clone {
    fn into_cached(self) -> Cached;
    fn from_cached(cached: Cached) -> Option<Self>;
}

impl CacheValue for Arc<[f32]> {
    fn into_cached(self) -> Cached {
        Cached::Vector(self)
    }
    fn from_cached(cached: Cached) -> Option<Self> {
        match cached {
            Cached::Vector(v) => Some(v),
            Cached::Score(_) => None,
        }
    }
}

impl CacheValue for f32 {
    fn into_cached(self) -> Cached {
        Cached::Score(self)
    }
    fn from_cached(cached: Cached) -> Option<Self> {
        match cached {
            Cached::Score(s) => Some(s),
            Cached::Vector(_) => None,
        }
    }
}

/// The engine's store of cached results under one byte budget; budget 0 holds nothing.
pub struct ContentStore {
    budget: u64,
    entries: Option<moka::sync::Cache<CacheKey, Cached>>,
}

impl std::fmt::Debug for ContentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStore")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl ContentStore {
    pub fn new(size: CacheSize) -> Arc<Self> {
        let entries = (size.0 > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(size.0)
                .weigher(|_key: &CacheKey, value: &Cached| value.weight())
                .build()
        });
        Arc::new(Self {
            budget: size.0,
            entries,
        })
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Entries held (moka's count, which trails inserts and evictions by its housekeeping).
    pub fn entries(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| c.entry_count())
    }

    /// Bytes held, as weighed against the budget.
    pub fn bytes(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| c.weighted_size())
    }

    /// Applies pending evictions so [`entries`](Self::entries) and [`bytes`](Self::bytes)
    /// are current (moka otherwise does this in batches on later calls).
    pub fn settle(&self) {
        if let Some(c) = &self.entries {
            c.run_pending_tasks();
        }
    }
}

/// One service's view of the store for one kind of result, with its own hit/miss counters.
pub struct ContentCache<V> {
    store: Arc<ContentStore>,
    hits: AtomicU64,
    misses: AtomicU64,
    kind: PhantomData<fn() -> V>,
}

impl<V: CacheValue> ContentCache<V> {
    pub fn new(store: Arc<ContentStore>) -> Self {
        Self {
            store,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            kind: PhantomData,
        }
    }

    /// Looks a key up, counting the hit or miss.
    pub fn get(&self, key: CacheKey) -> Option<V> {
        let found = self
            .store
            .entries
            .as_ref()
            .and_then(|c| c.get(&key))
            .and_then(V::from_cached);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn put(&self, key: CacheKey, value: V) {
        if let Some(c) = &self.store.entries {
            c.insert(key, value.into_cached());
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }
    pub fn store(&self) -> &Arc<ContentStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(dims: usize, x: f32) -> Arc<[f32]> {
        vec![x; dims].into()
    }

    #[test]
    fn counted_and_kinds_kept_apart() {
        let store = ContentStore::new(CacheSize(1 << 20));
        let embeddings: ContentCache<Arc<[f32]>> = ContentCache::new(store.clone());
        let scores: ContentCache<f32> = ContentCache::new(store.clone());
        let (a, b) = (cache_key(&[b"a"]), cache_key(&[b"b"]));
        assert!(embeddings.get(a).is_none());
        embeddings.put(a, vector(4, 1.0));
        scores.put(b, 0.5);
        assert_eq!(embeddings.get(a).as_deref(), Some(&[1.0; 4][..]));
        assert_eq!(scores.get(b), Some(0.5));
        // A score is never answered as a vector (keys of different tasks differ anyway).
        assert!(embeddings.get(b).is_none());
        assert_eq!((embeddings.hits(), embeddings.misses()), (1, 2));
        store.settle();
        assert_eq!(store.entries(), 2);
        assert_eq!(store.bytes(), 16 + 4 + 2 * ENTRY_OVERHEAD);
        assert_ne!(cache_key(&[b"ab", b"c"]), cache_key(&[b"a", b"bc"]));
    }

    /// The budget is in bytes: 1024-dim vectors (4 KiB each) in a 1 MiB store stay under
    /// 1 MiB however many are put, and wider vectors leave room for fewer of them.
    #[test]
    fn bounded_in_bytes_not_entries() {
        let budget = 1 << 20;
        let store = ContentStore::new(CacheSize(budget));
        let cache: ContentCache<Arc<[f32]>> = ContentCache::new(store.clone());
        for i in 0..2_000u32 {
            cache.put(cache_key(&[&i.to_le_bytes()]), vector(1024, i as f32));
        }
        store.settle();
        let per_entry = 4096 + ENTRY_OVERHEAD;
        assert!(store.bytes() <= budget, "{} > {budget}", store.bytes());
        assert!(store.entries() <= budget / per_entry, "{}", store.entries());
        assert!(store.entries() > 0);

        let narrow = ContentStore::new(CacheSize(budget));
        let cache: ContentCache<Arc<[f32]>> = ContentCache::new(narrow.clone());
        for i in 0..2_000u32 {
            cache.put(cache_key(&[&i.to_le_bytes()]), vector(64, 0.0));
        }
        narrow.settle();
        assert!(narrow.bytes() <= budget);
        assert!(
            narrow.entries() > 4 * store.entries(),
            "{}",
            narrow.entries()
        );
    }

    #[test]
    fn size_zero_holds_nothing() {
        let store = ContentStore::new(CacheSize(0));
        let cache: ContentCache<f32> = ContentCache::new(store.clone());
        cache.put(cache_key(&[b"a"]), 1.0);
        assert_eq!(cache.get(cache_key(&[b"a"])), None);
        assert_eq!((store.entries(), store.bytes(), cache.misses()), (0, 0, 1));
    }

    #[test]
    fn sizes_parse_with_units_and_bare_numbers_are_refused() {
        let size = |s: &str| s.parse::<CacheSize>().map(CacheSize::bytes);
        assert_eq!(size("512MiB").unwrap(), 512 << 20);
        assert_eq!(size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(size("800MB").unwrap(), 800_000_000);
        assert_eq!(size("0").unwrap(), 0);
        assert_eq!(size("off").unwrap(), 0);
        let err = size("100000").unwrap_err().to_string();
        assert!(
            err.contains("--cache-size") && err.contains("100000"),
            "{err}"
        );
        assert!(size("lots").is_err());
        let toml = |t: &str| {
            #[derive(serde::Deserialize)]
            struct File {
                cache_size: CacheSize,
            }
            toml::from_str::<File>(t).map(|f| f.cache_size.bytes())
        };
        assert_eq!(toml("cache_size = '64MiB'").unwrap(), 64 << 20);
        assert_eq!(toml("cache_size = 0").unwrap(), 0);
        assert!(toml("cache_size = 5")
            .unwrap_err()
            .to_string()
            .contains("unit"));
    }

    #[test]
    fn the_default_is_sized_to_the_machine() {
        assert_eq!(budget_for_memory(24 << 30), 768 << 20);
        assert_eq!(budget_for_memory(512 << 20), 32 << 20);
        assert_eq!(budget_for_memory(256 << 30), 1 << 30);
        let here = CacheSize::for_this_machine().bytes();
        assert!((32 << 20..=1 << 30).contains(&here), "{here}");
    }
}
