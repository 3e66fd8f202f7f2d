//! The memory allocator of every program that links fw: mimalloc. The
//! daemon, once it enforces, gives back what its start freed and from
//! then on returns freed memory to the kernel at once.
//!
//! Parsing and compiling a policy is bound by allocation: at 100,000 rules
//! `perf` put glibc's malloc at about 40% of it (`_int_malloc`,
//! `malloc_consolidate`, `unlink_chunk`); mimalloc compiles the bench's
//! 100,000-rule policy in half the time (BENCHMARKS.md, "The allocator").
//! It keeps what is freed for a while (its purge delay), and a thread that
//! goes idle never gets to give it back: with the default the daemon kept
//! 239 MB after a 100,000-rule start, where glibc kept 92 MB. Purging at
//! once from the first allocation kept 39-45 MB, but made the start itself
//! pay: a page given back is a page the next allocation faults in and the
//! kernel zeroes again (`clear_page_erms`, a third of a profiled compile).
//! Hence [`settle`]: the start runs with the default delay, and the daemon
//! purges once it enforces.

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

/// What was freed so far goes back to the kernel now, and from now on
/// what is freed goes back at once: for the daemon, once it enforces (its
/// start freed the parse's and the compile's working set; what it does
/// from then on, DNS answers, events, the odd switch, allocates little).
pub fn settle() {
    // SAFETY: setting an option and collecting are thread-safe; a forced
    // collect purges the arenas every thread allocates from.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_collect(true);
    }
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
            settle();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 0);
        }
    }
}
