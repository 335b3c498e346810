//! Retry policy shared by the HTTP providers: exponential backoff with full
//! jitter, honouring a server's `retry-after`, for [`Error::Transient`] only
//! (429, 529/overloaded, 5xx, connection resets, timeouts). 400, 401, 403 and
//! 404 are [`Error::Fatal`] and never retried: the task fails with the
//! provider's message.

use std::future::Future;
use std::time::Duration;

use crate::{Error, Result};

/// How often and how long to retry one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (default 4).
    pub max_retries: u32,
    /// First backoff (default 1 s); doubles each retry.
    pub base: Duration,
    /// Cap on one backoff and on a server's `retry-after` (default 60 s).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// No retries (tests, or a caller that retries itself).
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (1-based): the server's
    /// `retry-after` if it gave one (capped), else a random duration in
    /// `[0, min(max, base * 2^(retry-1))]` ("full jitter"). `entropy` is any
    /// varying number (the caller passes clock nanoseconds); tests pass fixed ones.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, entropy: u64) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max);
        }
        let exp = retry.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1u32 << exp).min(self.max);
        let nanos = ceiling.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        // splitmix64 of the entropy: uniform enough for jitter.
        let mut z = entropy.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Duration::from_nanos(z % (nanos + 1))
    }

    /// Run `call` until it succeeds, fails fatally, or the retries run out
    /// (the last transient error is returned). `on_retry` is told each wait.
    pub async fn run<T, F, Fut>(
        &self,
        mut call: F,
        mut on_retry: impl FnMut(u32, &Error, Duration),
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e @ Error::Transient { .. }) if retry < self.max_retries => {
                    retry += 1;
                    let retry_after = match &e {
                        Error::Transient { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let entropy = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(retry as u64);
                    let wait = self.delay(retry, retry_after, entropy);
                    on_retry(retry, &e, wait);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parse an HTTP `retry-after` header value: delta-seconds (possibly
/// fractional, as some servers send). HTTP dates are not honoured (None).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim().parse::<f64>().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient(after: Option<Duration>) -> Error {
        Error::Transient {
            provider: "t".into(),
            message: "overloaded".into(),
            retry_after: after,
        }
    }

    #[test]
    fn delays_are_jittered_within_an_exponential_ceiling() {
        let p = RetryPolicy::default();
        for entropy in [0, 1, 42, u64::MAX] {
            assert!(p.delay(1, None, entropy) <= Duration::from_secs(1));
            assert!(p.delay(3, None, entropy) <= Duration::from_secs(4));
            assert!(p.delay(30, None, entropy) <= Duration::from_secs(60));
        }
        assert_ne!(p.delay(3, None, 1), p.delay(3, None, 2), "jitter varies");
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(7)), 0),
            Duration::from_secs(7)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(600)), 0),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_and_fatal_ones_are_not() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy::default();
        let mut waits = Vec::new();
        let out = p
            .run(
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(transient(Some(Duration::from_secs(2)))),
                        1 => Err(transient(None)),
                        _ => Ok("done"),
                    }
                },
                |n, _, wait| waits.push((n, wait)),
            )
            .await;
        assert_eq!(out.unwrap(), "done");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(
            waits[0],
            (1, Duration::from_secs(2)),
            "retry-after honoured"
        );

        let calls = AtomicU32::new(0);
        let out: Result<()> = p
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Error::Fatal {
                        provider: "t".into(),
                        message: "401 invalid x-api-key".into(),
                    })
                },
                |_, _, _| {},
            )
            .await;
        assert!(matches!(out, Err(Error::Fatal { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "never retried");

        let calls = AtomicU32::new(0);
        let out: Result<()> = RetryPolicy {
            max_retries: 2,
            ..p
        }
        .run(
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(transient(None))
            },
            |_, _, _| {},
        )
        .await;
        assert!(matches!(out, Err(Error::Transient { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
