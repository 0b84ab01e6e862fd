//! Failed sign-ins: each is audited (who tried, from where, what they tried to reach) and an
//! address with too many in a short time is refused for a while, valid credentials included.
//!
//! Refusing valid credentials too is what makes the limit work: if a locked-out address could
//! still sign in with a right token, the answer would tell a guesser when a guess is right.
//! A success does not clear an address's count either, or a caller with one token of their own
//! could interleave it with guesses. While an address is refused, only the first refusal is
//! audited, so that a flood of guesses cannot flood the audit log.

use crate::{ErrorKind, ServiceError, ServiceResult, Services, User};
use milkglass_store::NewAuditEntry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failed sign-ins an address may make in a window before it is refused until the
/// window ends.
#[derive(Debug, Clone)]
pub struct SignInLimits {
    pub failures: u32,
    pub window: Duration,
}

impl Default for SignInLimits {
    fn default() -> Self {
        SignInLimits { failures: 20, window: Duration::from_secs(60) }
    }
}

/// The audit log's `user` for an attempt whose credential names no user. Parentheses are not
/// allowed in user names, so no user's entries can be mistaken for these.
pub const UNKNOWN_CALLER: &str = "(unknown)";

/// Where a sign-in came from and what it was for, as the front end saw it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The peer address (`None` for in-process callers, which are never limited).
    pub from: Option<IpAddr>,
    /// What the caller tried to reach (`GET /api/tables`, `Flight DoGet`), for the audit log.
    pub target: String,
}

/// The failed sign-ins of one server, by address.
pub(crate) struct SignInGuard {
    limits: SignInLimits,
    by_address: Mutex<HashMap<IpAddr, Tally>>,
}

struct Tally {
    since: Instant,
    failures: u32,
    refusal_audited: bool,
}

impl SignInGuard {
    pub(crate) fn new(limits: SignInLimits) -> Self {
        SignInGuard { limits, by_address: Mutex::new(HashMap::new()) }
    }

    /// `Some(seconds to wait)` when `from` is refused now; the second value says whether this is the
    /// first refusal of the window (the one to audit).
    fn refused(&self, from: IpAddr, now: Instant) -> Option<(u64, bool)> {
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let tally = map.get_mut(&from)?;
        let elapsed = now.duration_since(tally.since);
        if elapsed >= self.limits.window {
            map.remove(&from);
            return None;
        }
        if tally.failures < self.limits.failures {
            return None;
        }
        let first = !tally.refusal_audited;
        tally.refusal_audited = true;
        Some(((self.limits.window - elapsed).as_secs().max(1), first))
    }

    fn failed(&self, from: IpAddr, now: Instant) {
        let mut map = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        // Forget addresses whose windows ended, so that a scan from many addresses leaves no
        // lasting state behind.
        if map.len() > 10_000 {
            let window = self.limits.window;
            map.retain(|_, t| now.duration_since(t.since) < window);
        }
        let tally = map.entry(from).or_insert(Tally { since: now, failures: 0, refusal_audited: false });
        if now.duration_since(tally.since) >= self.limits.window {
            *tally = Tally { since: now, failures: 0, refusal_audited: false };
        }
        tally.failures += 1;
    }
}

impl Services {
    /// The user a bearer token names, if it is valid and not revoked, and `attempt`'s address is
    /// not refused for failing too often. Every failure is audited. Blocking.
    pub fn authenticate(&self, token: &str, attempt: &Attempt) -> ServiceResult<User> {
        let now = Instant::now();
        self.not_refused(attempt, now)?;
        if let Some(user) = self.store.authenticate(token)? {
            return Ok(user);
        }
        if let Some(from) = attempt.from {
            self.sign_ins.failed(from, now);
        }
        // A revoked or expired token still says whose it was: that is who tried.
        let (who, why) = match self.store.failed_token_owner(token)? {
            Some((name, why)) => (name, why),
            None => (UNKNOWN_CALLER.to_string(), "invalid token"),
        };
        self.audit_sign_in(attempt, &who, "unauthenticated", why);
        Err(ServiceError::unauthenticated("invalid or revoked token"))
    }

    /// Records a sign-in that failed before any user could be named (a malformed Authorization
    /// header, a single sign-on the provider or milkglass refused): it counts and is audited like a
    /// wrong token; `problem` says what was wrong.
    pub fn failed_sign_in(&self, attempt: &Attempt, problem: &str) -> ServiceResult<()> {
        let now = Instant::now();
        self.not_refused(attempt, now)?;
        if let Some(from) = attempt.from {
            self.sign_ins.failed(from, now);
        }
        self.audit_sign_in(attempt, UNKNOWN_CALLER, "unauthenticated", problem);
        Ok(())
    }

    /// Fails when `attempt`'s address is refused for now (HTTP 429, with how long to wait).
    pub(crate) fn not_refused(&self, attempt: &Attempt, now: Instant) -> ServiceResult<()> {
        let Some(from) = attempt.from else { return Ok(()) };
        let Some((wait, first)) = self.sign_ins.refused(from, now) else { return Ok(()) };
        if first {
            self.audit_sign_in(attempt, UNKNOWN_CALLER, "rate_limited", "too many failed sign-ins");
        }
        Err(ServiceError::new(
            ErrorKind::Busy,
            "too_many_failed_sign_ins",
            format!("too many failed sign-ins from {from}; try again in {wait} s"),
        )
        .with_details(serde_json::json!({ "retry_after_s": wait })))
    }

    /// An audit entry for a sign-in that did not succeed. Failing to write it is logged, never
    /// turned into a different answer for the caller.
    fn audit_sign_in(&self, attempt: &Attempt, who: &str, decision: &str, why: &str) {
        let from = attempt.from.map_or_else(|| "in-process".to_string(), |a| a.to_string());
        let entry = NewAuditEntry {
            user: who.to_string(),
            query: attempt.target.clone(),
            decision: decision.to_string(),
            reason: Some(format!("{why} from {from}")),
            ..NewAuditEntry::default()
        };
        if let Err(e) = self.store.audit(entry) {
            tracing::error!("auditing a failed sign-in from {from}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let guard = SignInGuard::new(SignInLimits { failures: 3, window: Duration::from_secs(60) });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(guard.refused(a, t0).is_none());
            guard.failed(a, t0);
        }
        assert_eq!(guard.refused(a, t0 + Duration::from_secs(10)), Some((50, true)));
        assert_eq!(guard.refused(a, t0 + Duration::from_secs(11)), Some((49, false)));
        assert!(guard.refused(b, t0).is_none(), "another address is not refused");
        assert!(guard.refused(a, t0 + Duration::from_secs(60)).is_none(), "the window ended");
    }
}
