use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff: `initial`, `2 × initial`, … up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |delay| delay.min(self.max))
    }

    /// Waits the delay after `attempt`; `false` when `shutdown` came first.
    pub async fn wait(&self, attempt: u32, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.delay(attempt)) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (1..=6).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn waiting_stops_at_shutdown() {
        let backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!backoff.wait(1, &shutdown).await);
    }
}
