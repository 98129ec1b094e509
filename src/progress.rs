//! Progress on stderr: one line per stage with its duration, and a live bar with the time left
//! for long loops (blocks, candidates, windows) when stderr is a terminal. Silent with `--quiet`.
//! When stderr is a file or a pipe, a long loop prints a plain line with the time left every
//! [`LOG_EVERY_SECONDS`] instead of the bar, and never an ANSI code.
//!
//! Written by hand rather than with a progress-bar crate such as indicatif: the plain lines on a
//! file or pipe are part of the interface (logs and tests read them), the foundation layer has no
//! dependency (docs/architecture.md), and one bar per loop is all the job needs. Parallel jobs of
//! one loop (NeuroAL's candidates) each report through [`Progress::job`] into their own slot, so
//! the bar counts finished items but the time left comes from the aggregate of all the slots, and
//! a count that arrives late from another thread never moves the bar back. The bar line is cut to
//! the terminal's width.

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
    /// The loop on screen.
    current: Arc<Mutex<Option<Loop>>>,
    /// For a job's reporter ([`Progress::job`]): the parent loop's label and the job's slot.
    job: Option<(String, usize)>,
}

/// A loop on screen: its items done, and each parallel job's share of the item it is working on.
#[derive(Debug)]
struct Loop {
    label: String,
    started: Instant,
    /// When the last plain line was printed.
    logged: Instant,
    /// Items finished: the largest count reported so far.
    done: usize,
    total: usize,
    /// Per job, the fraction in [0, 1) of its current item.
    parts: Vec<f64>,
}

impl Loop {
    fn new(label: &str, total: usize, now: Instant) -> Self {
        Self {
            label: label.to_string(),
            started: now,
            logged: now,
            done: 0,
            total,
            parts: Vec::new(),
        }
    }

    /// Records that `done` items are finished; a smaller count than one already seen (from a
    /// thread that reports late) changes nothing.
    fn finished(&mut self, done: usize) {
        self.done = self.done.max(done);
    }

    /// Records that job `job` is `done` of `total` steps into its current item.
    fn part(&mut self, job: usize, done: usize, total: usize) {
        if self.parts.len() <= job {
            self.parts.resize(job + 1, 0.0);
        }
        self.parts[job] = if total == 0 || done >= total {
            0.0
        } else {
            done as f64 / total as f64
        };
    }

    /// Seconds left, extrapolated from the items done plus every job's share of its current
    /// one; `None` before anything is done.
    fn seconds_left(&self, now: Instant) -> Option<f64> {
        let progressed = (self.done as f64 + self.parts.iter().sum::<f64>()).min(self.total as f64);
        (progressed > 0.0).then(|| {
            let elapsed = (now - self.started).as_secs_f64();
            elapsed / progressed * (self.total as f64 - progressed)
        })
    }
}

impl Progress {
    /// A reporter; `quiet` silences it entirely.
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            live: !quiet && std::io::stderr().is_terminal(),
            current: Arc::default(),
            job: None,
        }
    }

    /// The reporter of job `job` (from 0) of the loop `label`, one of several that run side by
    /// side: its own lines are silent, and each of its loops counts as the job's share of its
    /// current item of `label`, which the time left of `label` takes into account.
    pub fn job(&self, label: &str, job: usize) -> Self {
        Self {
            job: Some((label.to_string(), job)),
            ..self.clone()
        }
    }

    /// A reporter that prints nothing.
    pub fn silent() -> Self {
        Self::new(true)
    }

    /// Prints one line.
    pub fn note(&self, message: &str) {
        if self.job.is_some() {
            return;
        }
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
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let on_screen = match &self.job {
            // A job's loop is its share of the parent loop's current item.
            Some((parent, job)) => match current.as_mut() {
                Some(l) if &l.label == parent => {
                    l.part(*job, done, total);
                    l
                }
                _ => return,
            },
            None => match current.as_mut() {
                Some(l) if l.label == label && l.total == total && done > 0 => {
                    l.finished(done);
                    l
                }
                _ => current.insert(Loop::new(label, total, now)),
            },
        };
        let (label, done, total) = (on_screen.label.clone(), on_screen.done, on_screen.total);
        let line = bar_line(&label, done, total, on_screen.seconds_left(now));
        if !self.live {
            if (now - on_screen.logged).as_secs_f64() >= LOG_EVERY_SECONDS
                && done > 0
                && done < total
            {
                on_screen.logged = now;
                eprintln!("{}", plain_line(&line));
            }
            return;
        }
        let finished = done >= total && self.job.is_none();
        let elapsed = (now - on_screen.started).as_secs_f64();
        drop(current);
        let line = if finished {
            bar_line(&label, done, total, Some(elapsed))
        } else {
            line
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", fit(&line, terminal_width()));
        if finished {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// Columns of the terminal on stderr (`TIOCGWINSZ`), else `$COLUMNS`, else 80.
fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct it is given.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        return usize::from(size.ws_col);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .unwrap_or(80)
}

/// `line` cut to fewer than `width` characters, so that the cursor stays on its line.
fn fit(line: &str, width: usize) -> String {
    line.chars().take(width.saturating_sub(1)).collect()
}

/// `  label [██████░░░░░░] done/total  m:ss left`, with `seconds` left while items remain (nothing
/// before the first estimate), or the whole loop's seconds once `done` reaches `total`.
fn bar_line(label: &str, done: usize, total: usize, seconds: Option<f64>) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * BAR_WIDTH as f64).round() as usize;
    let bar: String = "█".repeat(filled) + &"░".repeat(BAR_WIDTH - filled);
    let tail = match seconds {
        Some(s) if done >= total => clock(s),
        Some(s) => format!("{} left", clock(s)),
        None => String::new(),
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
    use super::{bar_line, clock, fit, plain_line, Loop};
    use std::time::{Duration, Instant};

    #[test]
    fn the_bar_fills_and_shows_the_time_left() {
        let half = bar_line("blocks", 15, 30, Some(40.0));
        assert!(
            half.contains(&"█".repeat(12)) && half.contains(&"░".repeat(12)),
            "{half}"
        );
        assert!(
            half.contains("15/30") && half.ends_with("0:40 left"),
            "{half}"
        );
        assert!(bar_line("blocks", 0, 30, None).contains(&"░".repeat(24)));
        assert!(bar_line("blocks", 30, 30, Some(75.0)).ends_with("1:15"));
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(
            plain_line(&bar_line("blocks", 15, 30, Some(40.0))),
            "  blocks 15/30  0:40 left"
        );
    }

    #[test]
    fn the_time_left_comes_from_every_job_and_never_from_a_late_count() {
        let start = Instant::now();
        let now = start + Duration::from_secs(60);
        let mut l = Loop::new("candidates", 10, start);
        assert_eq!(l.seconds_left(now), None, "no estimate before any progress");
        // Four jobs, each half-way through its first candidate: 2 of 10 in 60 s.
        for job in 0..4 {
            l.part(job, 4, 8);
        }
        assert_eq!(l.seconds_left(now), Some(240.0));
        // One job finishes its candidate (its share goes back to zero with the count up).
        l.part(0, 8, 8);
        l.finished(1);
        assert_eq!(l.seconds_left(now), Some(60.0 / 2.5 * 7.5));
        // A count that another thread reports late does not move the loop back.
        l.finished(3);
        l.finished(2);
        assert_eq!(l.done, 3);
    }

    #[test]
    fn the_bar_is_cut_to_the_terminal_width() {
        let line = bar_line("block candidates", 3, 11, Some(100.0));
        assert_eq!(fit(&line, 20).chars().count(), 19);
        assert!(line.starts_with(&fit(&line, 20)));
        assert_eq!(fit(&line, 500), line);
        assert_eq!(fit(&line, 0), "");
    }
}
