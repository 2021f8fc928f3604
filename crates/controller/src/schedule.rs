//! Cadences: when a schedule's runs are due. Pure time arithmetic, no I/O.
//!
//! Accepted forms: 5-field cron (minute precision), 6-field cron (seconds first),
//! `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`, and `@every <duration>`
//! (`@every 90s`, `@every 1h30m`). Cron parsing is `croner`'s.
//!
//! Cron expressions are evaluated on the wall clock of the schedule's time zone, with this
//! daylight-saving rule:
//! - a local time that does not exist (the clock jumps forward over it) runs at the next
//!   valid instant, the moment the clock jumps; several skipped local times collapse into
//!   that one run;
//! - a local time that happens twice (the clock falls back) runs once, at its first
//!   occurrence.
//!
//! So `30 2 * * *` runs exactly once on every calendar day. `@every` intervals are absolute
//! (elapsed time, anchored at the Unix epoch so their phase survives restarts) and ignore
//! time zones.

use chrono::{DateTime, Duration as ChronoDuration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use std::time::Duration;

/// A parsed schedule expression together with the zone it is evaluated in.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    Cron { cron: Box<Cron>, tz: Tz },
    Every(Duration),
}

/// The bound on candidate steps in one search; a repeated hour of a per-second cron needs
/// 3,600, so this is only hit by a bug.
const MAX_STEPS: usize = 100_000;

impl Cadence {
    /// Parses `expr` to be evaluated in `tz`. The error says what is wrong with it.
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, String> {
        let expr = expr.trim();
        if let Some(rest) = expr.strip_prefix("@every") {
            let rest = rest.trim();
            if rest.is_empty() {
                return Err("@every needs a duration, e.g. \"@every 30s\"".into());
            }
            let d = humantime::parse_duration(rest).map_err(|e| format!("invalid @every duration: {e}"))?;
            if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
                return Err("@every needs a whole number of seconds, at least 1s".into());
            }
            return Ok(Cadence::Every(d));
        }
        if !expr.starts_with('@') {
            let fields = expr.split_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(format!("cron needs 5 fields (minute precision) or 6 (seconds first), found {fields}"));
            }
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| format!("invalid cron: {e}"))?;
        Ok(Cadence::Cron { cron: Box::new(cron), tz })
    }

    /// The first fire instant strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(d) => {
                let step = d.as_millis() as i64;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
            Cadence::Cron { cron, tz } => {
                let mut cursor = whole_second_naive(t, tz);
                for _ in 0..MAX_STEPS {
                    let candidate = cron.find_next_occurrence(&cursor, false).ok()?;
                    let instant = resolve_local(tz, candidate.naive_utc())?;
                    if instant > t {
                        return Some(instant);
                    }
                    cursor = candidate;
                }
                None
            }
        }
    }

    /// The last fire instant strictly before `t`.
    pub fn prev_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Cadence::Every(d) => {
                let step = d.as_millis() as i64;
                let ms = t.timestamp_millis();
                let prev = (ms - 1).div_euclid(step) * step;
                DateTime::from_timestamp_millis(prev)
            }
            Cadence::Cron { cron, tz } => {
                // The local second of `t` itself may fire before `t` (sub-second) or on a
                // later instant (a skipped local time): start one second past it so it is
                // examined too.
                let mut cursor = whole_second_naive(t, tz) + ChronoDuration::seconds(1);
                for _ in 0..MAX_STEPS {
                    let candidate = cron.find_previous_occurrence(&cursor, false).ok()?;
                    let instant = resolve_local(tz, candidate.naive_utc())?;
                    if instant < t {
                        return Some(instant);
                    }
                    cursor = candidate;
                }
                None
            }
        }
    }
}

/// The wall-clock time of `t` in `tz`, truncated to the second, as a naive UTC value.
fn whole_second_naive(t: DateTime<Utc>, tz: &Tz) -> DateTime<Utc> {
    let secs = t.timestamp();
    let whole = DateTime::from_timestamp(secs, 0).unwrap_or(t);
    naive_as_utc(whole.with_timezone(tz).naive_local())
}

/// Croner evaluated on UTC is plain calendar arithmetic: we use it on naive local times.
fn naive_as_utc(naive: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&naive)
}

/// Maps a wall-clock time of `tz` to an instant by the module's rule: an ambiguous time
/// takes its first occurrence, a non-existent one the first instant at or after it.
fn resolve_local(tz: &Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(dt) => Some(dt.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // Binary search for the first instant whose local time is at or after `naive`:
            // that is the moment the clock jumps over the gap. Gaps are shorter than a day.
            let guess = naive.and_utc().timestamp();
            let (mut lo, mut hi) = (guess - 30 * 3600, guess + 30 * 3600);
            let local_at = |s: i64| DateTime::from_timestamp(s, 0).map(|u| u.with_timezone(tz).naive_local());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if local_at(mid)? >= naive {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            DateTime::from_timestamp(lo, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("rfc3339").with_timezone(&Utc)
    }

    fn tz(name: &str) -> Tz {
        name.parse().expect("known zone")
    }

    fn fires(expr: &str, zone: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
        let c = Cadence::parse(expr, tz(zone)).expect("valid");
        let (mut t, end) = (utc(from), utc(until));
        let mut out = vec![];
        while let Some(n) = c.next_after(t) {
            if n > end {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    #[test]
    fn five_field_cron_fires_on_the_minute_in_the_zone() {
        let got = fires("0 * * * *", "Europe/Berlin", "2026-12-04T10:30:00Z", "2026-12-04T12:30:00Z");
        assert_eq!(got, vec![utc("2026-12-04T11:00:00Z"), utc("2026-12-04T12:00:00Z")]);
        let got = fires("0 9 * * *", "America/New_York", "2026-12-04T00:00:00Z", "2026-12-05T00:00:00Z");
        assert_eq!(got, vec![utc("2026-12-04T14:00:00Z")]);
    }

    #[test]
    fn six_field_cron_has_seconds_first() {
        let got = fires("*/20 * * * * *", "UTC", "2026-12-04T10:00:00Z", "2026-12-04T10:01:00Z");
        assert_eq!(got, vec![utc("2026-12-04T10:00:20Z"), utc("2026-12-04T10:00:40Z"), utc("2026-12-04T10:01:00Z")]);
    }

    #[test]
    fn nicknames_are_accepted() {
        for (nick, next) in [
            ("@hourly", "2026-12-04T11:00:00Z"),
            ("@daily", "2026-12-05T00:00:00Z"),
            ("@weekly", "2026-12-06T00:00:00Z"),
            ("@monthly", "2027-01-01T00:00:00Z"),
        ] {
            let c = Cadence::parse(nick, Tz::UTC).expect(nick);
            assert_eq!(c.next_after(utc("2026-12-04T10:30:00Z")), Some(utc(next)), "{nick}");
        }
    }

    #[test]
    fn every_is_elapsed_time_anchored_at_the_epoch() {
        let c = Cadence::parse("@every 90s", tz("Asia/Kolkata")).expect("valid");
        let t = utc("2026-12-04T10:00:00.250Z");
        let next = c.next_after(t).expect("next");
        assert_eq!(next.timestamp() % 90, 0);
        assert_eq!(next.timestamp_subsec_millis(), 0);
        assert!(next > t && next <= t + ChronoDuration::seconds(90));
        assert_eq!(c.next_after(next), Some(next + ChronoDuration::seconds(90)));
        assert_eq!(c.prev_before(next), Some(next - ChronoDuration::seconds(90)));
        assert_eq!(c.prev_before(next + ChronoDuration::milliseconds(1)), Some(next));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, needle) in [
            ("61 * * * *", "invalid cron"),
            ("* * * *", "found 4"),
            ("0 0 0 * * * 2027", "found 7"),
            ("@every", "needs a duration"),
            ("@every soon", "invalid @every"),
            ("@every 500ms", "whole number"),
            ("@fortnightly", "invalid cron"),
            ("", "found 0"),
        ] {
            let err = Cadence::parse(expr, Tz::UTC).expect_err(expr);
            assert!(err.contains(needle), "{expr:?}: {err}");
        }
    }

    #[test]
    fn a_skipped_local_time_runs_once_when_the_clock_jumps() {
        // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        let got = fires("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z");
        assert_eq!(
            got,
            vec![
                utc("2026-03-28T01:30:00Z"),
                utc("2026-03-29T01:00:00Z"), // 03:00 CEST, the first valid instant
                utc("2026-03-30T00:30:00Z"),
            ]
        );
    }

    #[test]
    fn many_skipped_local_times_collapse_into_one_run() {
        let got = fires("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:40:00Z", "2026-03-29T01:20:00Z");
        assert_eq!(got, vec![utc("2026-03-29T00:45:00Z"), utc("2026-03-29T01:00:00Z"), utc("2026-03-29T01:15:00Z")]);
    }

    #[test]
    fn a_repeated_local_time_runs_once_at_its_first_occurrence() {
        // New York, 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let got = fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z");
        assert_eq!(got, vec![utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]);
    }

    #[test]
    fn sao_paulo_before_2019_had_midnight_dst_gaps() {
        // 2018-11-04 00:00 BRT jumped to 01:00 BRST: a daily midnight run still happens once.
        let got = fires("0 0 * * *", "America/Sao_Paulo", "2018-11-03T12:00:00Z", "2018-11-05T12:00:00Z");
        assert_eq!(got, vec![utc("2018-11-04T03:00:00Z"), utc("2018-11-05T02:00:00Z")]);
    }

    #[test]
    fn every_calendar_day_gets_exactly_one_run_across_a_year_of_transitions() {
        for zone in ["Europe/Berlin", "America/New_York", "America/Sao_Paulo", "Australia/Lord_Howe"] {
            let got = fires("30 2 * * *", zone, "2017-12-31T12:00:00Z", "2019-01-01T12:00:00Z");
            let tz = tz(zone);
            let mut days: Vec<_> = got.iter().map(|t| t.with_timezone(&tz).date_naive()).collect();
            let n = days.len();
            days.dedup();
            assert_eq!(days.len(), n, "{zone}: two runs on one day");
            assert!((365..=366).contains(&n), "{zone}: {n} runs in a year");
        }
    }

    #[test]
    fn prev_before_is_the_inverse_of_next_after() {
        for (expr, zone) in [
            ("*/15 * * * *", "Europe/Berlin"),
            ("30 1 * * *", "America/New_York"),
            ("30 2 * * *", "Europe/Berlin"),
            ("0 0 * * *", "America/Sao_Paulo"),
        ] {
            let c = Cadence::parse(expr, tz(zone)).expect("valid");
            let mut t = utc("2018-01-01T00:00:00Z");
            for _ in 0..2000 {
                let next = c.next_after(t).expect("next");
                assert_eq!(c.prev_before(next + ChronoDuration::seconds(1)), Some(next), "{expr} {zone} at {next}");
                assert!(c.prev_before(next).expect("prev") < next);
                t = next + ChronoDuration::hours(5);
            }
        }
    }
}
