//! Wall-clock times for trace events.
//!
//! The programs stamp events with `bpf_ktime_get_ns()`, CLOCK_MONOTONIC,
//! the clock the session's deadline is kept in too. `trace` turns that into
//! wall-clock time with the offset CLOCK_REALTIME - CLOCK_MONOTONIC, taken
//! again at every lease renewal (about once a second) so a stepped clock
//! (NTP, `date -s`) shows up within a second. The alternatives are worse:
//! `bpf_ktime_get_tai_ns()` is CLOCK_TAI, which differs from UTC by a leap
//! second offset only an NTP daemon sets (0 on a machine without one, so
//! times would be off by 37 s on some nodes and not on others), and
//! `bpf_ktime_get_boot_ns()` differs from the monotonic clock only across
//! suspend, which nodes do not do.

use anyhow::Result;
use nix::time::{clock_gettime, ClockId};

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, nanoseconds, at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    /// The offset now: the realtime reading against the middle of two
    /// monotonic readings around it.
    pub fn now() -> Result<WallClock> {
        let before = nanos(ClockId::CLOCK_MONOTONIC)?;
        let real = nanos(ClockId::CLOCK_REALTIME)?;
        let after = nanos(ClockId::CLOCK_MONOTONIC)?;
        Ok(WallClock::from_readings(
            real,
            before + (after - before) / 2,
        ))
    }

    /// The offset from a realtime and a monotonic reading of one moment.
    pub fn from_readings(realtime_ns: i128, monotonic_ns: i128) -> WallClock {
        WallClock {
            offset_ns: realtime_ns - monotonic_ns,
        }
    }

    /// Nanoseconds since the Unix epoch (UTC) of a monotonic timestamp.
    pub fn unix_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }
}

fn nanos(clock: ClockId) -> Result<i128> {
    let ts = clock_gettime(clock)?;
    Ok(i128::from(ts.tv_sec()) * 1_000_000_000 + i128::from(ts.tv_nsec()))
}

/// RFC 3339 in UTC with microseconds: `2026-12-06T20:37:15.123456Z`.
pub fn rfc3339_micros(unix_ns: i128) -> String {
    let micros = unix_ns.div_euclid(1_000);
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`: eras of 400 years starting in March).
fn civil_from_days(days: i128) -> (i128, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i128 = 1_000_000_000;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(
            rfc3339_micros(951_782_400 * NS + 123_456_789),
            "2000-02-29T00:00:00.123456Z"
        );
        assert_eq!(
            rfc3339_micros(1_796_589_435 * NS + 999_999_999),
            "2026-12-06T20:37:15.999999Z"
        );
        assert_eq!(
            rfc3339_micros(4_107_542_399 * NS),
            "2100-02-28T23:59:59.000000Z"
        );
        assert_eq!(rfc3339_micros(-1_000), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn monotonic_stamps_move_by_the_offset() {
        let clock = WallClock::from_readings(1_796_589_435 * NS, 5_000 * NS);
        assert_eq!(clock.unix_ns(5_000 * NS as u64), 1_796_589_435 * NS);
        assert_eq!(
            rfc3339_micros(clock.unix_ns(5_001 * NS as u64 + 250_000)),
            "2026-12-06T20:37:16.000250Z"
        );
    }

    #[test]
    fn the_offset_taken_now_agrees_with_the_system_clock() {
        let clock = WallClock::now().unwrap();
        let monotonic = nanos(ClockId::CLOCK_MONOTONIC).unwrap();
        let real = nanos(ClockId::CLOCK_REALTIME).unwrap();
        let converted = clock.unix_ns(u64::try_from(monotonic).unwrap());
        assert!(
            (converted - real).abs() < 50_000_000,
            "converted {converted} vs realtime {real}"
        );
    }
}
