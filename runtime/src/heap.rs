//! The process's heap, sized for a small daemon rather than a server.
//!
//! glibc's malloc gives every thread that allocates its own arena, up to
//! eight per core, and keeps what is freed in them for later. A node's
//! threads are few but many of them allocate once in a while (blocking host
//! calls, the compiler's worker threads during a deployment), so each holds
//! megabytes it no longer needs. Two arenas are plenty for a process whose
//! work is a few module ticks a second, and what a deployment's compilation
//! freed goes back to the system right after it. Long-running processes
//! also trim every [`TRIM_EVERY`]: glibc gives back only the top of a heap
//! on its own, and the pages freed in the middle of an arena after a burst
//! (a replica applied, a page of the web view rendered, a batch of reports
//! stored) stay mapped otherwise — about 3.5 MiB in an idle domain manager
//! and in the top manager. All are no-ops on other C libraries and systems.

use std::time::Duration;

/// Most malloc arenas; call it first thing in `main`, before threads start.
pub const ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`ARENAS`].
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a tunable of the allocator; M_ARENA_MAX
    // with a positive value is valid at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the heap's free memory to the system (after a deployment: the
/// compiler's temporary data is freed but would stay mapped).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // arenas; it touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How often [`keep_trimmed`] trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Trims the heap every [`TRIM_EVERY`], for as long as the process runs
/// (spawn it on the process's runtime). Trimming walks the arenas' free
/// chunks under their locks: it runs on a blocking thread.
pub async fn keep_trimmed() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}
