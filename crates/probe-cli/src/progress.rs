//! Progress of long work, wherever stderr goes: a bar on a terminal; otherwise (a Slurm or
//! nohup log, a pipe) a plain line every `ICET_PROGRESS_SECONDS` seconds (default 30; 0: after
//! every step), with the rate and the time left, so that a log shows how far a run got.
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a log gets a progress line by default.
const DEFAULT_EVERY: Duration = Duration::from_secs(30);

pub struct Progress {
    bar: ProgressBar,
    /// Lines instead of a bar: every so often, and when the last one was.
    lines: Option<(Duration, Instant)>,
    /// What is counted ("answers", "scored").
    what: &'static str,
    total: usize,
    done: usize,
    tokens: usize,
    started: Instant,
}

impl Progress {
    /// Progress over `total` items of `what`.
    pub fn new(total: usize, what: &'static str) -> Self {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{bar:30}} {{pos}}/{{len}} {what}  {{per_sec}}  {{msg}}  eta {{eta}}"
            ))
            .expect("valid template"),
        );
        let lines = (!std::io::stderr().is_terminal()).then(|| {
            let every = std::env::var("ICET_PROGRESS_SECONDS")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .unwrap_or(DEFAULT_EVERY);
            (every, Instant::now())
        });
        Self { bar, lines, what, total, done: 0, tokens: 0, started: Instant::now() }
    }

    /// `n` more items done, with `tokens` more generated tokens (0 where tokens mean nothing).
    pub fn inc(&mut self, n: usize, tokens: usize) {
        self.done += n;
        self.tokens += tokens;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.inc(n as u64);
        if self.tokens > 0 {
            self.bar.set_message(format!("{:.1} tok/s", self.tokens as f64 / secs));
        }
        if let Some((every, last)) = &mut self.lines {
            if last.elapsed() >= *every || self.done == self.total {
                *last = Instant::now();
                eprintln!("{}", self.line());
            }
        }
    }

    /// `icet: 120/2000 answers (6.0%), 3.21/s, 410.2 tokens/s, 9m 47s to go`.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = self.done as f64 / secs;
        let share = if self.total == 0 { 100.0 } else { self.done as f64 * 100.0 / self.total as f64 };
        let mut s = format!("icet: {}/{} {} ({share:.1}%), {rate:.2}/s", self.done, self.total, self.what);
        if self.tokens > 0 {
            s += &format!(", {:.1} tokens/s", self.tokens as f64 / secs);
        }
        if self.done < self.total && rate > 0.0 {
            s += &format!(", {} to go", duration((self.total - self.done) as f64 / rate));
        }
        s
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// `1h 02m`, `9m 47s`, `12s`.
fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, _) => format!("{h}h {m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(587.0), "9m 47s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
