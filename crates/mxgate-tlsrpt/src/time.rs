//! UTC calendar arithmetic for reporting periods (RFC 8460 §4.1: a report covers a UTC
//! day by default) and RFC 3339 timestamps (§4.4 `date-range`).

use std::time::Duration;

use mxgate_smtp::date::UtcDateTime;

/// The period `[start, end)` (unix seconds) that contains `now`. Periods are aligned
/// to the unix epoch, which is a UTC midnight, so a 24-hour period is exactly a UTC
/// day and shorter periods that divide a day tile it.
pub fn period_containing(now: u64, period: Duration) -> (u64, u64) {
    let len = period.as_secs().max(1);
    let start = now - now % len;
    (start, start + len)
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339 §5.6).
pub fn rfc3339(secs: u64) -> String {
    utc(secs).rfc3339()
}

/// RFC 5322 `Date:` in UTC.
pub fn rfc5322(secs: u64) -> String {
    utc(secs).rfc5322()
}

fn utc(secs: u64) -> UtcDateTime {
    UtcDateTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2016-04-01T00:00:00Z, the RFC 8460 §4.4 example's start.
        assert_eq!(rfc3339(1_459_468_800), "2016-04-01T00:00:00Z");
        assert_eq!(rfc3339(1_459_468_800 + 86399), "2016-04-01T23:59:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc5322(1_459_468_800), "Fri, 01 Apr 2016 00:00:00 +0000");
    }

    #[test]
    fn periods_are_utc_aligned() {
        let day = Duration::from_secs(86400);
        let t = 1_459_468_800 + 3600 * 13 + 7;
        assert_eq!(
            period_containing(t, day),
            (1_459_468_800, 1_459_468_800 + 86400)
        );
        assert_eq!(period_containing(1_459_468_800, day).0, 1_459_468_800);
        let ten = Duration::from_secs(10);
        assert_eq!(period_containing(105, ten), (100, 110));
        assert_eq!(period_containing(5, Duration::ZERO), (5, 6));
    }
}
