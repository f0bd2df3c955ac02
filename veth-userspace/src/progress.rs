//! A counter of a long operation's progress (`pods wired 120/500`), drawn
//! in place on stderr when stderr is a terminal; nothing when it is not,
//! so logs and pipes get no control characters.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

/// Redraws at most this often: a terminal need not see every pod.
const REDRAW: Duration = Duration::from_millis(100);

pub struct Counter {
    what: &'static str,
    total: usize,
    done: usize,
    on: bool,
    drawn: Option<Instant>,
}

impl Counter {
    /// Counts up to `total` things described as `what`; silent when stderr
    /// is not a terminal or there is nothing to count.
    pub fn new(what: &'static str, total: usize) -> Counter {
        Counter::drawing(what, total, total > 0 && std::io::stderr().is_terminal())
    }

    fn drawing(what: &'static str, total: usize, on: bool) -> Counter {
        Counter {
            what,
            total,
            done: 0,
            on,
            drawn: None,
        }
    }

    /// One more done; redrawn unless it was drawn just now (the last one is
    /// always drawn).
    pub fn tick(&mut self) {
        self.done = (self.done + 1).min(self.total);
        let due = self.drawn.is_none_or(|at| at.elapsed() >= REDRAW) || self.done == self.total;
        if self.on && due {
            self.drawn = Some(Instant::now());
            let _ =
                std::io::stderr().write_all(render(self.what, self.done, self.total).as_bytes());
        }
    }
}

impl Drop for Counter {
    /// Ends the line, so what follows (an error too) starts on its own.
    fn drop(&mut self) {
        if self.drawn.is_some() {
            let _ = std::io::stderr().write_all(b"\n");
        }
    }
}

/// The counter's line, drawn over the previous one.
pub fn render(what: &str, done: usize, total: usize) -> String {
    format!("\r\x1b[K{what} {done}/{total}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_overwrites_the_last() {
        assert_eq!(render("pods wired", 3, 500), "\r\x1b[Kpods wired 3/500");
    }

    #[test]
    fn off_it_draws_nothing_and_counts_to_the_total() {
        let mut c = Counter::drawing("pods wired", 2, false);
        for _ in 0..3 {
            c.tick();
        }
        assert_eq!(c.done, 2);
        assert!(c.drawn.is_none());
    }

    #[test]
    fn on_it_draws_the_first_and_the_last() {
        let mut c = Counter::drawing("pods wired", 3, true);
        c.tick();
        let first = c.drawn.unwrap();
        c.tick();
        assert_eq!(c.drawn, Some(first), "redrawn within {REDRAW:?}");
        c.tick();
        assert_ne!(c.drawn, Some(first), "the last one is drawn");
        // The test's stderr gets the closing newline on drop.
    }
}
