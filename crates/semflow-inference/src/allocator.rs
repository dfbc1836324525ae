//! The memory allocator's settings, declared once for every semflow binary.
//!
//! semflow runs on the system allocator (glibc's malloc on Linux) with three settings, chosen
//! by the allocator A/B and the soaks of BENCHMARKS §7:
//! - **two arenas** ([`ARENA_MAX`]; glibc's default is 8 per core): a long-running worker's
//!   many threads (tokio's, rayon's, DataFusion's, rdkafka's) each kept freed memory in an arena
//!   of their own, and resident memory crept up (+17% over the 300 s soak; +4.4% with two);
//! - **no `mmap` per allocation** ([`MMAP_MAX`] 0): a forward pass allocates tensors of tens to
//!   hundreds of MB, which glibc would otherwise map fresh for each call and unmap at free, so
//!   every pass paid a page fault and the kernel's zeroing for each 4 KiB page (65,000 faults
//!   per 16k-token round of the `small` model; mimalloc avoided that by keeping pages, and grew
//!   +18.6% over the soak instead);
//! - **freed memory kept up to [`TRIM_THRESHOLD`]** at the top of the heap rather than returned
//!   at once, so the next pass reuses the same pages: the process holds about its peak, as with
//!   any allocator that keeps pages, and gives back only what exceeds it.
//!
//! A setting given in the environment (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_MAX_`,
//! `MALLOC_TRIM_THRESHOLD_`, or any `GLIBC_TUNABLES`) wins, so a deployment can tune without a
//! rebuild. Elsewhere than glibc the settings do not apply and nothing is changed.

/// Malloc arenas a process may create.
pub const ARENA_MAX: i32 = 2;
/// Allocations glibc may serve with a mapping of their own (0: none, all come from the heap).
pub const MMAP_MAX: i32 = 0;
/// Free bytes at the top of the heap kept before glibc returns memory to the system.
pub const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings; call first thing in `main`, before other threads start. Returns
/// what the allocator refused, one line each, for the caller to log once logging is set up.
#[must_use = "the refused settings are for the log"]
pub fn configure() -> Vec<String> {
    let mut refused = Vec::new();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_in_env = |name: &str| std::env::var_os(name).is_some();
        if set_in_env("GLIBC_TUNABLES") {
            return refused;
        }
        for (param, name, value, env) in [
            (
                libc::M_ARENA_MAX,
                "M_ARENA_MAX",
                ARENA_MAX,
                "MALLOC_ARENA_MAX",
            ),
            (libc::M_MMAP_MAX, "M_MMAP_MAX", MMAP_MAX, "MALLOC_MMAP_MAX_"),
            (
                libc::M_TRIM_THRESHOLD,
                "M_TRIM_THRESHOLD",
                TRIM_THRESHOLD,
                "MALLOC_TRIM_THRESHOLD_",
            ),
        ] {
            if set_in_env(env) {
                continue;
            }
            // SAFETY: mallopt changes one malloc parameter; it is called before other threads
            // exist, and a parameter or value it does not take is refused (returns 0).
            if unsafe { libc::mallopt(param, value) } == 0 {
                refused.push(format!("the allocator refused {name}={value}"));
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc takes every setting (a refusal would be logged by the binaries and go unseen).
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_settings() {
        if std::env::var_os("GLIBC_TUNABLES").is_none() {
            assert_eq!(configure(), Vec::<String>::new());
        }
    }
}
