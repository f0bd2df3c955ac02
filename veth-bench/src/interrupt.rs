//! SIGINT and SIGTERM as a flag: a long benchmark checks it between steps
//! and, once set, stops where it is and removes what it made, instead of
//! dying half-way with pods, namespaces and networks left behind.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

/// Set by the handler [`catch`] installs.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT and SIGTERM set [`INTERRUPTED`] instead of ending
/// the process.
pub fn catch() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// SIGINT and SIGTERM end the process again.
pub fn release() {
    // SAFETY: back to the default disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
    }
}

/// Whether a signal came.
pub fn is_set() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error saying what happens now (`then`), if a signal came.
pub fn check(then: &str) -> Result<()> {
    if is_set() {
        bail!("interrupted; {then}");
    }
    Ok(())
}
