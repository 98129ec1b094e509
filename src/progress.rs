//! Progress on stderr: one line per stage with its duration, and a live bar with the time left
//! for long loops (blocks, candidates, windows) when stderr is a terminal. Silent with `--quiet`,
//! and nothing but the stage lines when stderr is a file or a pipe.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Width of the bar in characters.
const BAR_WIDTH: usize = 24;

/// Reports stages and items on stderr.
#[derive(Clone, Debug)]
pub struct Progress {
    quiet: bool,
    live: bool,
    /// The loop on screen and when it started.
    current: Arc<Mutex<Option<(String, Instant)>>>,
}

impl Progress {
    /// A reporter; `quiet` silences it entirely.
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            live: !quiet && std::io::stderr().is_terminal(),
            current: Arc::default(),
        }
    }

    /// A reporter that prints nothing.
    pub fn silent() -> Self {
        Self::new(true)
    }

    /// Prints one line.
    pub fn note(&self, message: &str) {
        if self.live {
            // Over a bar that is on screen; the bar comes back with the next item.
            eprintln!("\r\x1b[2K{message}");
        } else if !self.quiet {
            eprintln!("{message}");
        }
    }

    /// Starts a timed stage; the returned timer prints the stage's duration when finished.
    pub fn stage(&self, name: &str) -> Stage {
        Stage {
            name: name.to_string(),
            start: Instant::now(),
            progress: self.clone(),
        }
    }

    /// Shows `done` of `total` for `label` as a bar with the time left, on a live terminal.
    pub fn item(&self, label: &str, done: usize, total: usize) {
        if !self.live {
            return;
        }
        let now = Instant::now();
        let started = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match &*current {
                Some((l, t)) if l == label && done > 0 => *t,
                _ => {
                    *current = Some((label.to_string(), now));
                    now
                }
            }
        };
        let line = bar_line(label, done, total, (now - started).as_secs_f64());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        if done >= total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// `  label [██████░░░░░░] done/total  m:ss left`; the time left is extrapolated from the
/// `elapsed` seconds once something is done.
fn bar_line(label: &str, done: usize, total: usize, elapsed: f64) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let bar: String = "█".repeat(filled) + &"░".repeat(BAR_WIDTH - filled);
    let tail = if done >= total {
        clock(elapsed)
    } else if done > 0 {
        format!(
            "{} left",
            clock(elapsed / done as f64 * (total - done) as f64)
        )
    } else {
        String::new()
    };
    format!("  {label:<24} [{bar}] {done}/{total}  {tail}")
}

/// `m:ss`, or `h:mm:ss` from an hour on.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// A running stage.
pub struct Stage {
    name: String,
    start: Instant,
    progress: Progress,
}

impl Stage {
    /// Ends the stage, prints `name … seconds` and returns the seconds.
    pub fn finish(self) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        self.progress
            .note(&format!("{:<28} {secs:>8.2} s", self.name));
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::{bar_line, clock};

    #[test]
    fn the_bar_fills_and_extrapolates_the_time_left() {
        let half = bar_line("blocks", 15, 30, 40.0);
        assert!(
            half.contains(&"█".repeat(12)) && half.contains(&"░".repeat(12)),
            "{half}"
        );
        assert!(
            half.contains("15/30") && half.ends_with("0:40 left"),
            "{half}"
        );
        assert!(bar_line("blocks", 0, 30, 0.0).contains(&"░".repeat(24)));
        assert!(bar_line("blocks", 30, 30, 75.0).ends_with("1:15"));
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
