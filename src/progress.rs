//! Progress on stderr: one line per stage with its duration, and a live bar with the time left
//! for long loops (blocks, candidates, windows) when stderr is a terminal. Silent with `--quiet`.
//! When stderr is a file or a pipe, a long loop prints a plain line with the time left every
//! [`LOG_EVERY_SECONDS`] instead of the bar.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Width of the bar in characters.
const BAR_WIDTH: usize = 24;
/// Seconds between two progress lines of a loop when stderr is not a terminal.
pub const LOG_EVERY_SECONDS: f64 = 30.0;

/// Reports stages and items on stderr.
#[derive(Clone, Debug)]
pub struct Progress {
    quiet: bool,
    live: bool,
    /// The loop on screen, when it started, and when its last plain line was printed.
    current: Arc<Mutex<Option<(String, Instant, Instant)>>>,
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

    /// Shows `done` of `total` for `label` with the time left: as a bar on a live terminal, as a
    /// plain line every [`LOG_EVERY_SECONDS`] otherwise.
    pub fn item(&self, label: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let (started, log_line) = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match current.as_mut() {
                Some((l, started, logged)) if l == label && done > 0 => {
                    let due = (now - *logged).as_secs_f64() >= LOG_EVERY_SECONDS;
                    if due {
                        *logged = now;
                    }
                    (*started, due && done < total)
                }
                _ => {
                    *current = Some((label.to_string(), now, now));
                    (now, false)
                }
            }
        };
        if !self.live {
            if log_line {
                let line = bar_line(label, done, total, (now - started).as_secs_f64());
                eprintln!("{}", plain_line(&line));
            }
            return;
        }
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

/// A bar line without the bar, for logs: `  label 15/30  0:40 left`.
fn plain_line(bar: &str) -> String {
    match (bar.find('['), bar.find(']')) {
        (Some(open), Some(close)) => format!("{}{}", bar[..open].trim_end(), &bar[close + 1..]),
        _ => bar.to_string(),
    }
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
    use super::{bar_line, clock, plain_line};

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
        assert_eq!(
            plain_line(&bar_line("blocks", 15, 30, 40.0)),
            "  blocks 15/30  0:40 left"
        );
    }
}
