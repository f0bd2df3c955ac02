//! Saying that a lock is awaited: a change blocked behind another one
//! (`vethctl up` behind a long `up`) is otherwise silent for as long as
//! the other takes.

use std::{fs::File, sync::mpsc, time::Duration};

/// How long a wait goes unmentioned: most locks are free within it.
const QUIET: Duration = Duration::from_secs(1);

/// Until dropped: once [`QUIET`] has passed, says that `what` (held in
/// `file`) is awaited, with its holder's PID when the kernel tells it.
pub struct Announcement {
    _done: mpsc::Sender<()>,
}

pub fn announce(file: &File, what: &str) -> Announcement {
    use std::os::unix::fs::MetadataExt;
    let (done, waiting) = mpsc::channel::<()>();
    let id = file.metadata().ok().map(|m| (m.dev(), m.ino()));
    let what = what.to_string();
    // A thread, not a timed poll of the lock: a blocking flock keeps its
    // place in the kernel's queue.
    let spawned = std::thread::Builder::new()
        .name("lock-wait".into())
        .spawn(move || {
            if waiting.recv_timeout(QUIET) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            let holder = id
                .and_then(|(dev, ino)| {
                    holder_pid(&std::fs::read_to_string("/proc/locks").ok()?, dev, ino)
                })
                .map(|pid| format!(" (PID {pid})"))
                .unwrap_or_default();
            crate::logging::notice(&format!(
                "waiting for {what} held by another vethctl{holder}…"
            ));
        });
    // Without the thread the wait goes on unannounced; nothing else differs.
    drop(spawned);
    Announcement { _done: done }
}

/// The PID `/proc/locks` gives for a granted lock on the file `dev`/`ino`
/// (lines like `1: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF`; waiters'
/// lines have `->` after the number).
pub fn holder_pid(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // The kernel's encoding of dev_t (MAJOR/MINOR of a 64-bit dev_t).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") {
            return None;
        }
        let at = fields.iter().position(|f| *f == wanted)?;
        fields.get(at.checked_sub(1)?)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKS: &str = "1: FLOCK  ADVISORY  WRITE 4242 00:19:5678 0 EOF\n\
                         1: -> FLOCK  ADVISORY  WRITE 5151 00:19:5678 0 EOF\n\
                         2: POSIX  ADVISORY  READ 77 fd:01:99 0 EOF\n";

    #[test]
    fn the_granted_lock_names_the_holder() {
        // dev 0x19: major 0, minor 0x19.
        assert_eq!(holder_pid(LOCKS, 0x19, 5678), Some(4242));
        // major 0xfd, minor 1.
        assert_eq!(holder_pid(LOCKS, 0xfd01, 99), Some(77));
        assert_eq!(holder_pid(LOCKS, 0x19, 5679), None);
        assert_eq!(holder_pid("", 0x19, 5678), None);
    }

    #[test]
    fn the_holder_of_a_real_lock_is_found() {
        use std::os::unix::{fs::MetadataExt, io::AsRawFd};
        let path = std::env::temp_dir().join(format!("vethctl-lockwait-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // SAFETY: flock on an fd we own.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        let meta = file.metadata().unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        assert_eq!(
            holder_pid(&locks, meta.dev(), meta.ino()),
            Some(std::process::id())
        );
    }
}
