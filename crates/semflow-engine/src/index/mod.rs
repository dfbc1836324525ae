//! The vector index: Lance datasets as SQL tables.
//!
//! - [`table`]: `STORED AS LANCE` tables — scans of the newest version, upserting INSERTs.
//! - [`write`]: one atomic change (upserts, deletes, stream offsets) as one Lance commit.
//! - [`offsets`]: the Kafka offsets stored in commits, and reading them back.
//! - [`fence`]: refusing stream commits from a worker whose partitions moved on (zombies).
//! - [`maintain`]: compaction and index updates that carry the stream positions forward.
//! - [`knn`]: top-k vector queries served by Lance's (ANN or flat) search.
//! - [`create`]: `CREATE INDEX … USING ivf_pq|ivf_flat|inverted`.
//! - [`fts`]: `full_text_search()`: BM25 keyword search over an inverted index.

pub mod alias;
pub mod create;
pub mod fence;
pub mod fts;
pub mod knn;
pub mod maintain;
pub mod offsets;
pub mod table;
pub mod write;

pub use offsets::SourceOffsets;
pub use table::{LanceTable, LanceTableFactory};
pub use write::{Change, CommitStats};
