//! Latency samples and their percentiles.

use std::time::Duration;

/// Durations of one kind of operation.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    sorted: bool,
    durations: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, duration: Duration) {
        self.durations.push(duration);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.durations.extend(other.durations);
        self.sorted = false;
    }

    /// The `q` quantile (nearest rank), in milliseconds; `None` without samples.
    pub fn quantile_ms(&mut self, q: f64) -> Option<f64> {
        if self.durations.is_empty() {
            return None;
        }
        if !self.sorted {
            self.durations.sort_unstable();
            self.sorted = true;
        }
        let last = self.durations.len() - 1;
        // Nearest rank.
        let index = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        Some(ms(self.durations[index.min(last)]))
    }

    pub fn p50(&mut self) -> Option<f64> {
        self.quantile_ms(0.5)
    }
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The median of `durations`, which must not be empty.
pub fn median(mut durations: Vec<Duration>) -> Duration {
    durations.sort_unstable();
    durations[durations.len() / 2]
}
