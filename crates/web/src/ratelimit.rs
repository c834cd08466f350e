//! Per-client-address rate limit for the ingest routes: a token bucket per IP address.
//!
//! Ingest is the one place where a single misbehaving client (a meter stuck in a retry loop, a
//! script gone wrong) can keep the writer busy for everyone; queries and administration are
//! left alone. A bucket holds up to twice the per-second rate, so a client that batches
//! irregularly is not punished for a short burst.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Addresses tracked at most. An idle address needs no entry (a full bucket is the same as
/// none), so this is reached only when this many addresses were all busy in the last seconds;
/// it caps memory at a few MB even when addresses are spoofed or rotated (IPv6).
const MAX_ADDRESSES: usize = 65_536;
/// How often idle entries are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A throttled address is logged at most this often, so a flood does not flood the log too.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct Bucket {
    tokens: f64,
    updated: Instant,
    logged: Option<Instant>,
    /// Refusals since the last log line, reported in the next one.
    unlogged: u64,
}

struct Buckets {
    map: HashMap<IpAddr, Bucket>,
    swept: Instant,
}

/// What the limiter says about one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Allow,
    /// Refused; `retry_after` is when the next token will be there. `log` is `Some(refusals
    /// since the last log line)` when this refusal should be logged.
    Refuse {
        retry_after: Duration,
        log: Option<u64>,
    },
}

/// Token buckets keyed by client IP address; shared by the three ingest routes.
pub struct RateLimiter {
    /// Tokens added per second; 0 turns the limiter off.
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
    refused: AtomicU64,
}

impl RateLimiter {
    /// `per_second` requests per second per address, bursts of twice that; 0 disables.
    pub fn new(per_second: u32) -> RateLimiter {
        let rate = f64::from(per_second);
        RateLimiter {
            rate,
            burst: 2.0 * rate,
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
            refused: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token from `ip`'s bucket at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Decision {
        if !self.enabled() {
            return Decision::Allow;
        }
        let mut buckets = self.buckets.lock().expect("rate limiter poisoned");
        if now.saturating_duration_since(buckets.swept) >= SWEEP_EVERY {
            self.sweep(&mut buckets, now);
        }
        if !buckets.map.contains_key(&ip) && buckets.map.len() >= MAX_ADDRESSES {
            self.make_room(&mut buckets, now);
        }
        let bucket = buckets.map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
            logged: None,
            unlogged: 0,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Decision::Allow;
        }
        self.refused.fetch_add(1, Relaxed);
        let retry_after = Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate);
        bucket.unlogged += 1;
        let log = match bucket.logged {
            Some(at) if now.saturating_duration_since(at) < LOG_EVERY => None,
            _ => {
                bucket.logged = Some(now);
                Some(std::mem::take(&mut bucket.unlogged))
            }
        };
        Decision::Refuse { retry_after, log }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    /// Drops buckets that have filled up again (forgetting them changes nothing), unless
    /// their address was logged recently: forgetting that would let it be logged again early.
    fn sweep(&self, buckets: &mut Buckets, now: Instant) {
        buckets.swept = now;
        buckets.map.retain(|_, b| {
            self.refilled(b, now) < self.burst
                || b.logged
                    .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        });
    }

    /// At the cap: sweep, and if every address is still busy, forget the quarter that was
    /// quiet longest. Those get a fresh bucket if they come back, a small gift that keeps
    /// memory bounded; a quarter at a time keeps the cost per request constant on average.
    fn make_room(&self, buckets: &mut Buckets, now: Instant) {
        self.sweep(buckets, now);
        if buckets.map.len() < MAX_ADDRESSES {
            return;
        }
        let mut times: Vec<Instant> = buckets.map.values().map(|b| b.updated).collect();
        let cut = times.len() / 4;
        let (_, oldest_kept, _) = times.select_nth_unstable(cut);
        let oldest_kept = *oldest_kept;
        buckets.map.retain(|_, b| b.updated >= oldest_kept);
        tracing::warn!(
            tracked = buckets.map.len(),
            "ingest rate limiter: {MAX_ADDRESSES} busy client addresses; forgot the longest quiet ones"
        );
    }

    /// Addresses with a bucket right now.
    pub fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .expect("rate limiter poisoned")
            .map
            .len()
    }

    /// The Prometheus text for `/metrics`.
    pub fn render(&self) -> String {
        format!(
            "# HELP wattline_http_rate_limited_total Ingest requests refused (429) because their client address exceeded ingest_rate_limit.\n\
             # TYPE wattline_http_rate_limited_total counter\n\
             wattline_http_rate_limited_total {}\n\
             # HELP wattline_http_rate_limit_addresses Client addresses the ingest rate limiter tracks.\n\
             # TYPE wattline_http_rate_limit_addresses gauge\n\
             wattline_http_rate_limit_addresses {}\n",
            self.refused.load(Relaxed),
            self.tracked(),
        )
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`) for the ingest routes.
pub async fn limit(State(limiter): State<Arc<RateLimiter>>, req: Request, next: Next) -> Response {
    // The server always inserts the peer address; only a router driven without a socket (unit
    // tests) lacks it, and there is nobody to limit there.
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; one client, one key.
    let ip = peer.ip().to_canonical();
    match limiter.check(ip, Instant::now()) {
        Decision::Allow => next.run(req).await,
        Decision::Refuse { retry_after, log } => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Some(earlier) = log {
                tracing::warn!(
                    client = %ip,
                    limit_per_s = limiter.rate,
                    refused_since_last_log = earlier,
                    "ingest rate limit exceeded; answering 429 (logged at most every 10 s per address)"
                );
            }
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "more than {} ingest requests per second from {ip}; retry after {seconds} s",
                    limiter.rate
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let l = RateLimiter::new(5);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..10 {
            assert_eq!(l.check(a, t0), Decision::Allow, "request {i} of the burst");
        }
        match l.check(a, t0) {
            Decision::Refuse { retry_after, log } => {
                assert_eq!(retry_after, Duration::from_millis(200));
                assert_eq!(log, Some(1), "the first refusal is logged");
            }
            other => panic!("{other:?}"),
        }
        // Another address has its own bucket.
        assert_eq!(l.check(ip("192.0.2.2"), t0), Decision::Allow);
        // 200 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(l.check(a, t1), Decision::Allow);
        assert!(matches!(l.check(a, t1), Decision::Refuse { log: None, .. }));
        // Two seconds of quiet fill the bucket again, and no more than that.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(l.check(a, t2), Decision::Allow);
        }
        assert!(matches!(l.check(a, t2), Decision::Refuse { .. }));
        assert_eq!(l.refused.load(Relaxed), 3);
    }

    #[test]
    fn refusals_are_logged_at_most_every_ten_seconds_with_a_count() {
        let l = RateLimiter::new(1);
        let t0 = Instant::now();
        let a = ip("2001:db8::1");
        let mut logged = Vec::new();
        // One request every 100 ms for 25 s: 1 per second gets through.
        for i in 0..250u64 {
            if let Decision::Refuse { log: Some(n), .. } =
                l.check(a, t0 + Duration::from_millis(100 * i))
            {
                logged.push((i, n));
            }
        }
        let times: Vec<u64> = logged.iter().map(|(i, _)| *i).collect();
        assert_eq!(times.len(), 3, "{logged:?}");
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 100), "{logged:?}");
        assert_eq!(logged[0].1, 1);
        assert!(
            logged[1].1 > 50,
            "the count covers the quiet period: {logged:?}"
        );
    }

    #[test]
    fn zero_disables_the_limit() {
        let l = RateLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(l.check(ip("127.0.0.1"), t0), Decision::Allow);
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let l = RateLimiter::new(10);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.check(IpAddr::from(i.to_be_bytes()), t0);
        }
        // One address is throttled 5 s later, and so logged: it is kept while its log mark
        // counts, though its bucket is full again by the time of the sweep.
        for _ in 0..25 {
            l.check(ip("198.51.100.7"), t0 + Duration::from_secs(5));
        }
        assert_eq!(l.tracked(), 1001);
        // After the sweep interval every bucket has filled up; only the logged one stays.
        l.check(ip("198.51.100.8"), t0 + SWEEP_EVERY);
        assert_eq!(l.tracked(), 2, "the logged address and the newcomer");
        l.check(ip("198.51.100.9"), t0 + 2 * SWEEP_EVERY);
        assert_eq!(l.tracked(), 1, "only the newest");
    }

    #[test]
    fn memory_stays_bounded_when_every_address_is_busy() {
        let l = RateLimiter::new(1);
        let t0 = Instant::now();
        // Each address takes one token and is then quiet; with a rate of 1/s their buckets
        // stay below full for two seconds, so within a second no sweep can drop them.
        let n = MAX_ADDRESSES as u32 + 10_000;
        for i in 0..n {
            let t = t0 + Duration::from_micros(u64::from(i) * 10);
            l.check(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t);
            assert!(l.tracked() <= MAX_ADDRESSES);
        }
        assert!(l.tracked() >= MAX_ADDRESSES * 3 / 4, "{}", l.tracked());
        // The newest address is still tracked: the oldest were forgotten, not the newest.
        let mut b = l.buckets.lock().unwrap();
        assert!(b
            .map
            .contains_key(&IpAddr::from((0x0a00_0000 + n - 1).to_be_bytes())));
        assert!(!b
            .map
            .contains_key(&IpAddr::from(0x0a00_0000u32.to_be_bytes())));
        b.map.clear();
    }
}
