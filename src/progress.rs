//! Progress on stderr: one line per stage with its duration, and a live counter for long loops
//! when stderr is a terminal. Silent with `--quiet`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Reports stages and items on stderr.
#[derive(Clone, Debug)]
pub struct Progress {
    quiet: bool,
    live: bool,
}

impl Progress {
    /// A reporter; `quiet` silences it entirely.
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            live: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A reporter that prints nothing.
    pub fn silent() -> Self {
        Self::new(true)
    }

    /// Prints one line.
    pub fn note(&self, message: &str) {
        if !self.quiet {
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

    /// Shows `done` of `total` for `label` on a live terminal.
    pub fn item(&self, label: &str, done: usize, total: usize) {
        if self.live {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r  {label}: {done}/{total}");
            if done == total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
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
