//! The memory allocator of every program that links fw: mimalloc, told to
//! give memory back to the kernel as soon as it is freed.
//!
//! Parsing and compiling a policy is bound by allocation: at 100,000 rules
//! `perf` put glibc's malloc at about 40% of it (`_int_malloc`,
//! `malloc_consolidate`, `unlink_chunk`). With mimalloc a fresh `fw run` of
//! the bench's 100,000-rule policy enforced in 1.78-2.26 s instead of
//! 2.12-2.59 s (compile 190 -> 90-110 ms, the lint 48 -> 20-30, the
//! warnings 76 -> 7-13), and a daemon that keeps its memory small matters
//! as much: glibc kept 92 MB resident after that start (with one arena),
//! mimalloc with its default purge delay 239 MB, and with purging at once
//! 39-42 MB (BENCHMARKS.md, "The allocator"). Purging at once costs a
//! `madvise` per freed span, which the daemon, idle but for DNS answers,
//! events and the odd switch, does not notice.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e`
/// (c_src/mimalloc/v3/include/mimalloc.h of libmimalloc-sys 0.1.49, which
/// does not export the constant): the milliseconds freed memory waits
/// before it goes back to the kernel (1,000 by default in this version,
/// src/options.c; 0: at once). A thread that goes idle never gets to a
/// delayed purge, so the threads that parsed and compiled kept what they
/// freed.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory goes back to the kernel at once: for the daemon, which
/// lives on after its start freed the parse's and the compile's memory.
/// Call first thing in `main`: it applies to what is freed from then on.
pub fn return_freed_memory_at_once() {
    // SAFETY: setting an option is thread-safe and takes effect on the
    // next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is mimalloc's purge delay: its default (1,000 ms,
    /// no other option's) until set, 0 after. (A libmimalloc-sys whose
    /// enum moved would read another option's default here.)
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reading and setting options is thread-safe.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000, "mimalloc's default purge delay");
            return_freed_memory_at_once();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 0);
        }
    }
}
