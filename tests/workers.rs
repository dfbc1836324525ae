//! The tests that run `semflow run`/`serve` workers against time — SIGSTOP past a session
//! timeout, SIGKILL at random points, paced load with memory judged — in a binary of their
//! own: cargo runs test binaries one after the other, so they never share the machine with
//! the rest of the suite, and within it they take turns (`common::one_heavy_test_at_a_time`).
//!
//! Run one area with its module path, e.g. `cargo test --test workers soak::`.

mod common;

mod exactly_once;
mod fencing;
mod fleet;
mod object_store;
mod soak;
