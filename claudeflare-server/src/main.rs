//! `claudeflare-server`: the claudeflare proxy, its API and dashboard, and the account CLI.

use std::process::ExitCode;

/// mimalloc: fewer cycles per allocation than glibc's, and far less fragmentation (resident
/// memory) under a multi-threaded load. Built without transparent huge pages (the `no_thp`
/// feature): mimalloc 3 asks for them on its arena, and one live object in a 2 MiB region then
/// keeps all of it resident. With them the server sat at 37 MiB idle (14 MiB of it huge pages)
/// and peaked at 60 MiB under 32 connections; without, it peaks at 34 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Have mimalloc return freed memory to the system at once rather than after 10 ms (100 ms for
/// its arenas): under a burst of requests this halves peak resident memory, for a few more
/// `madvise` calls.
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    /// `mi_option_purge_delay` in mimalloc's headers (the same index in v2 and v3).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table; the index is a
    // valid option and 0 a valid value for it. No memory is touched.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    claudeflare_server::main()
}
