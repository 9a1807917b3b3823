//! A failure that repeats is logged when it starts and when it ends (and
//! reminded once a minute while it lasts) — not on every retry: a fenced
//! conductor whose etcd was away retried five times a second, each retry a
//! warning, each with slightly different transport words.

use std::time::{Duration, Instant};

/// How often a failure that goes on is reported again.
const REMIND_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Repeated {
    what: &'static str,
    failing: Option<(String, Instant, u64)>,
    reminded: Option<Instant>,
}

impl Repeated {
    pub fn new(what: &'static str) -> Repeated {
        Repeated { what, failing: None, reminded: None }
    }

    /// A failure; logged when the trouble starts, then once a minute.
    pub fn failed(&mut self, message: &str) {
        let now = Instant::now();
        match &mut self.failing {
            Some((_, _, n)) => {
                *n += 1;
                if self.reminded.is_none_or(|r| now.duration_since(r) >= REMIND_EVERY) {
                    tracing::warn!(what = self.what, failures = *n, "still failing: {message}");
                    self.reminded = Some(now);
                }
            }
            None => {
                tracing::warn!(what = self.what, "{message}; retrying (repeats are not logged)");
                self.failing = Some((message.to_string(), now, 1));
                self.reminded = Some(now);
            }
        }
    }

    /// A success; ends a failure that was logged.
    pub fn succeeded(&mut self) {
        if let Some((_, since, n)) = self.failing.take() {
            tracing::info!(what = self.what, failures = n, "recovered after {:.1} s", since.elapsed().as_secs_f64());
        }
        self.reminded = None;
    }

    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }
}
