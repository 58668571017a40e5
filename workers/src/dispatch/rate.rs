//! Per-relay send limits (per minute, hour and day), counted from the log.
//!
//! Windows are **fixed calendar windows in UTC** (the minute 12:03:00–12:03:59, the hour
//! 12:00–12:59, the day 00:00–23:59), counted from the `at` of every `DeliveryAttempted`
//! with outcome `sent` for the relay. A fixed window needs one counter per window instead
//! of a timestamp per send (a per_day of 100 000 would otherwise keep 100 000 timestamps
//! per relay), and it is what providers' daily quotas usually mean. The price is the usual
//! one: up to twice the limit can go out across a window boundary.
//!
//! Because the dispatcher replays the whole log at start, the counts survive restarts.
//!
//! A send on its way holds a *reservation*, so that concurrent rounds cannot together pass
//! a limit. A reservation for a send that the relay accepted is released only once the
//! dispatcher has followed the log past the recorded attempt (which then counts instead),
//! so the send is never counted zero times or twice.
use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use domain::mail_settings::Relay;
use uuid::Uuid;

/// (tenant, relay id).
pub(super) type RelayKey = (Uuid, Uuid);

/// How long to wait before looking again when only sends still on their way fill a window:
/// they may yet fail and free their slot.
const RESERVED_RECHECK: TimeDelta = TimeDelta::seconds(1);

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Index of the window (seconds since the epoch divided by its length).
    index: i64,
    count: u32,
}

impl Window {
    fn count_at(&self, index: i64) -> u32 {
        if self.index == index {
            self.count
        } else {
            0
        }
    }

    fn record(&mut self, index: i64) {
        if index > self.index {
            *self = Window { index, count: 1 };
        } else if index == self.index {
            self.count = self.count.saturating_add(1);
        }
        // An older window (attempts are appended roughly, not strictly, in `at` order) no
        // longer matters for any decision.
    }
}

#[derive(Clone, Debug, Default)]
struct Counters {
    windows: [Window; 3],
    reserved: u32,
}

const LENGTHS: [i64; 3] = [60, 3_600, 86_400];

fn limits(relay: &Relay) -> [Option<u32>; 3] {
    [relay.per_minute, relay.per_hour, relay.per_day]
}

#[derive(Debug, Default)]
pub(super) struct RateLimiter {
    relays: HashMap<RelayKey, Counters>,
}

impl RateLimiter {
    /// A send the log recorded (a `DeliveryAttempted` with outcome `sent`).
    pub fn record_sent(&mut self, key: RelayKey, at: DateTime<Utc>) {
        let c = self.relays.entry(key).or_default();
        let secs = at.timestamp();
        for (w, len) in c.windows.iter_mut().zip(LENGTHS) {
            w.record(secs.div_euclid(len));
        }
    }

    /// `Ok` when `relay` may take one more message now; otherwise when to look again.
    pub fn check(
        &self,
        tenant: Uuid,
        relay: &Relay,
        now: DateTime<Utc>,
    ) -> Result<(), DateTime<Utc>> {
        let lim = limits(relay);
        if lim.iter().all(Option::is_none) {
            return Ok(());
        }
        let Some(c) = self.relays.get(&(tenant, relay.id)) else {
            return Ok(());
        };
        let secs = now.timestamp();
        let mut opens: Option<DateTime<Utc>> = None;
        for ((w, len), limit) in c.windows.iter().zip(LENGTHS).zip(lim) {
            let Some(limit) = limit else { continue };
            let index = secs.div_euclid(len);
            let recorded = w.count_at(index);
            if recorded.saturating_add(c.reserved) < limit {
                continue;
            }
            let at = if recorded >= limit {
                DateTime::from_timestamp((index + 1) * len, 0).unwrap_or(now + RESERVED_RECHECK)
            } else {
                now + RESERVED_RECHECK
            };
            // The relay opens when every full window has rolled over.
            opens = Some(opens.map_or(at, |o| o.max(at)));
        }
        match opens {
            None => Ok(()),
            Some(at) => Err(at),
        }
    }

    /// [`RateLimiter::check`], and on `Ok` holds a slot until [`RateLimiter::release`].
    pub fn reserve(
        &mut self,
        tenant: Uuid,
        relay: &Relay,
        now: DateTime<Utc>,
    ) -> Result<(), DateTime<Utc>> {
        self.check(tenant, relay, now)?;
        if limits(relay).iter().any(Option::is_some) {
            self.relays.entry((tenant, relay.id)).or_default().reserved += 1;
        }
        Ok(())
    }

    pub fn release(&mut self, key: RelayKey) {
        if let Some(c) = self.relays.get_mut(&key) {
            c.reserved = c.reserved.saturating_sub(1);
        }
    }

    /// Whether a reservation is held (only relays with a limit hold one).
    pub fn holds(relay: &Relay) -> bool {
        limits(relay).iter().any(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::mail_settings::TlsMode;

    fn relay(per_minute: Option<u32>, per_hour: Option<u32>) -> Relay {
        Relay {
            id: Uuid::from_u128(2),
            name: "r".into(),
            host: "127.0.0.1".into(),
            port: 25,
            tls: TlsMode::None,
            username: None,
            password: None,
            priority: 1,
            max_connections: 1,
            per_minute,
            per_hour,
            per_day: None,
        }
    }

    // 1_800_000_000 s is a whole hour (08:00 UTC).
    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().unwrap()
    }

    const TENANT: Uuid = Uuid::from_u128(1);

    #[test]
    fn fixed_minute_window_from_recorded_sends() {
        let r = relay(Some(2), None);
        let mut l = RateLimiter::default();
        let key = (TENANT, r.id);
        assert!(l.check(TENANT, &r, t(5)).is_ok());
        l.record_sent(key, t(1));
        l.record_sent(key, t(2));
        assert_eq!(l.check(TENANT, &r, t(30)), Err(t(60)));
        // The next calendar minute is a new window.
        assert!(l.check(TENANT, &r, t(60)).is_ok());
        // Another tenant's relay with the same id is another relay.
        assert!(l.check(Uuid::from_u128(9), &r, t(30)).is_ok());
    }

    #[test]
    fn reservations_count_until_released() {
        let r = relay(Some(2), None);
        let mut l = RateLimiter::default();
        assert!(l.reserve(TENANT, &r, t(0)).is_ok());
        assert!(l.reserve(TENANT, &r, t(0)).is_ok());
        // Full only because of sends on their way: look again soon, not next minute.
        assert_eq!(l.reserve(TENANT, &r, t(0)), Err(t(1)));
        l.release((TENANT, r.id));
        assert!(l.reserve(TENANT, &r, t(0)).is_ok());
    }

    #[test]
    fn a_relay_opens_when_all_its_full_windows_roll_over() {
        let r = relay(Some(1), Some(2));
        let mut l = RateLimiter::default();
        let key = (TENANT, r.id);
        l.record_sent(key, t(0));
        l.record_sent(key, t(61));
        assert_eq!(l.check(TENANT, &r, t(70)), Err(t(3_600)));
        // Late, out-of-order attempts from an older window do not disturb the current one.
        l.record_sent(key, t(59));
        assert_eq!(l.check(TENANT, &r, t(3_600)), Ok(()));
    }

    #[test]
    fn no_limits_no_reservations() {
        let r = relay(None, None);
        let mut l = RateLimiter::default();
        for _ in 0..10 {
            assert!(l.reserve(TENANT, &r, t(0)).is_ok());
        }
        assert!(!RateLimiter::holds(&r));
        assert!(l.relays.is_empty());
    }
}
