//! Slows down password guessing, per account and per client address, without letting an
//! attacker lock the real user out.
//!
//! - **Per address:** [`ADDRESS_FAILURES`] failed logins within [`WINDOW`] block the address
//!   for [`ADDRESS_BLOCK`]. Someone trying many accounts from one place stops there.
//! - **Per account:** after [`ACCOUNT_FREE_FAILURES`] consecutive failures the account is
//!   locked for 30 s, doubling with each further failure up to [`ACCOUNT_LOCK_MAX`]. A
//!   distributed guesser gets a few tries per quarter hour.
//! - **No lock-out of the owner:** an address that logged in to the account successfully
//!   before is exempt from the account lock (only its own address counter applies to it),
//!   and the lock always ends. So an attacker elsewhere can delay strangers, but not the admin
//!   at their usual desk, and never for ever.
//!
//! State is in memory, per node, bounded in size; a restart forgets it, which only gives a
//! guesser a fresh handful of tries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(15 * 60);
pub const ADDRESS_FAILURES: u32 = 20;
pub const ADDRESS_BLOCK: Duration = Duration::from_secs(15 * 60);
pub const ACCOUNT_FREE_FAILURES: u32 = 5;
pub const ACCOUNT_LOCK_BASE: Duration = Duration::from_secs(30);
pub const ACCOUNT_LOCK_MAX: Duration = Duration::from_secs(15 * 60);
/// How many addresses an account remembers as having logged in successfully.
const KNOWN_ADDRESSES: usize = 16;
/// Entries kept at most per map; beyond it the stalest are dropped.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
struct AddressState {
    /// Failures inside the current window, and when the window began.
    failures: u32,
    window_start: Option<Instant>,
    blocked_until: Option<Instant>,
    last_seen: Option<Instant>,
}

#[derive(Default)]
struct AccountState {
    consecutive_failures: u32,
    locked_until: Option<Instant>,
    known_addresses: Vec<String>,
    last_seen: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    addresses: HashMap<String, AddressState>,
    accounts: HashMap<String, AccountState>,
}

/// Why a login attempt is not even checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Address { retry_after: Duration },
    Account { retry_after: Duration },
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Address { retry_after } | Refusal::Account { retry_after } => *retry_after,
        }
    }
}

#[derive(Default)]
pub struct LoginThrottle {
    inner: Mutex<Inner>,
}

impl LoginThrottle {
    /// Whether an attempt on `account` from `address` may be checked at all, at `now`.
    pub fn check(&self, account: &str, address: &str, now: Instant) -> Result<(), Refusal> {
        let inner = self.inner.lock().expect("throttle lock poisoned");
        if let Some(a) = inner.addresses.get(address) {
            if let Some(until) = a.blocked_until.filter(|u| *u > now) {
                return Err(Refusal::Address {
                    retry_after: until - now,
                });
            }
        }
        if let Some(acct) = inner.accounts.get(account) {
            let known = acct.known_addresses.iter().any(|a| a == address);
            if let Some(until) = acct.locked_until.filter(|u| *u > now && !known) {
                return Err(Refusal::Account {
                    retry_after: until - now,
                });
            }
        }
        Ok(())
    }

    pub fn failed(&self, account: &str, address: &str, now: Instant) {
        let mut inner = self.inner.lock().expect("throttle lock poisoned");
        bound(&mut inner.addresses, now, |s| s.last_seen);
        let a = inner.addresses.entry(address.to_owned()).or_default();
        a.last_seen = Some(now);
        if a.window_start
            .is_none_or(|s| now.duration_since(s) > WINDOW)
        {
            a.window_start = Some(now);
            a.failures = 0;
        }
        a.failures += 1;
        if a.failures >= ADDRESS_FAILURES {
            a.blocked_until = Some(now + ADDRESS_BLOCK);
            a.failures = 0;
            a.window_start = None;
        }
        bound(&mut inner.accounts, now, |s| s.last_seen);
        let acct = inner.accounts.entry(account.to_owned()).or_default();
        acct.last_seen = Some(now);
        acct.consecutive_failures += 1;
        if acct.consecutive_failures >= ACCOUNT_FREE_FAILURES {
            let doublings = (acct.consecutive_failures - ACCOUNT_FREE_FAILURES).min(10);
            let lock = (ACCOUNT_LOCK_BASE * 2u32.pow(doublings)).min(ACCOUNT_LOCK_MAX);
            acct.locked_until = Some(now + lock);
        }
    }

    pub fn succeeded(&self, account: &str, address: &str, now: Instant) {
        let mut inner = self.inner.lock().expect("throttle lock poisoned");
        bound(&mut inner.accounts, now, |s| s.last_seen);
        let acct = inner.accounts.entry(account.to_owned()).or_default();
        acct.last_seen = Some(now);
        acct.consecutive_failures = 0;
        acct.locked_until = None;
        acct.known_addresses.retain(|a| a != address);
        acct.known_addresses.insert(0, address.to_owned());
        acct.known_addresses.truncate(KNOWN_ADDRESSES);
        if let Some(a) = inner.addresses.get_mut(address) {
            a.failures = a.failures.saturating_sub(1);
        }
    }
}

/// Keeps a map under [`MAX_ENTRIES`] by dropping entries idle for longer than the longest
/// block, then, if still full, the stalest tenth.
fn bound<T>(map: &mut HashMap<String, T>, now: Instant, last_seen: impl Fn(&T) -> Option<Instant>) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    let idle = WINDOW.max(ADDRESS_BLOCK).max(ACCOUNT_LOCK_MAX);
    map.retain(|_, s| last_seen(s).is_some_and(|t| now.duration_since(t) < idle));
    if map.len() >= MAX_ENTRIES {
        let mut ages: Vec<Instant> = map.values().filter_map(&last_seen).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() / 10];
        map.retain(|_, s| last_seen(s).is_some_and(|t| t > cut));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_locks_after_five_failures_and_the_lock_grows_but_ends() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..ACCOUNT_FREE_FAILURES {
            assert!(t.check("ann", &format!("10.0.0.{i}"), now).is_ok());
            t.failed("ann", &format!("10.0.0.{i}"), now);
        }
        let Err(Refusal::Account { retry_after }) = t.check("ann", "10.9.9.9", now) else {
            panic!("account not locked")
        };
        assert_eq!(retry_after, ACCOUNT_LOCK_BASE);
        // Each further failure doubles the lock, up to the cap.
        let mut at = now;
        for _ in 0..20 {
            at += ACCOUNT_LOCK_MAX;
            t.failed("ann", "10.9.9.9", at);
        }
        let r = t.check("ann", "10.9.9.8", at).unwrap_err();
        assert_eq!(r.retry_after(), ACCOUNT_LOCK_MAX);
        assert!(t.check("ann", "10.9.9.8", at + ACCOUNT_LOCK_MAX).is_ok());
        // Other accounts are not affected.
        assert!(t.check("bob", "10.9.9.8", at).is_ok());
    }

    #[test]
    fn a_known_address_is_not_locked_out_by_someone_elses_guessing() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        t.succeeded("admin", "192.168.1.10", now);
        for _ in 0..12 {
            t.failed("admin", "203.0.113.5", now);
        }
        assert!(matches!(
            t.check("admin", "198.51.100.1", now),
            Err(Refusal::Account { .. })
        ));
        assert!(t.check("admin", "192.168.1.10", now).is_ok());
    }

    #[test]
    fn an_address_trying_many_accounts_is_blocked() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..ADDRESS_FAILURES {
            t.failed(&format!("user{i}"), "203.0.113.5", now);
        }
        let r = t.check("someone-new", "203.0.113.5", now).unwrap_err();
        assert_eq!(
            r,
            Refusal::Address {
                retry_after: ADDRESS_BLOCK
            }
        );
        assert!(t.check("someone-new", "203.0.113.6", now).is_ok());
        assert!(t
            .check("someone-new", "203.0.113.5", now + ADDRESS_BLOCK)
            .is_ok());
    }

    #[test]
    fn success_resets_the_account() {
        let t = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..4 {
            t.failed("ann", "10.0.0.1", now);
        }
        t.succeeded("ann", "10.0.0.1", now);
        for _ in 0..4 {
            t.failed("ann", "10.0.0.2", now);
        }
        assert!(t.check("ann", "10.0.0.3", now).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut map: HashMap<String, Option<Instant>> = HashMap::new();
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            map.insert(i.to_string(), Some(now + Duration::from_millis(i as u64)));
        }
        bound(&mut map, now + Duration::from_secs(1), |s| *s);
        assert!(map.len() < MAX_ENTRIES);
        assert!(map.contains_key(&(MAX_ENTRIES - 1).to_string()));
    }
}
