//! UTC calendar arithmetic for reporting periods (RFC 8460 §4.1: a report covers a UTC
//! day by default) and RFC 3339 timestamps (§4.4 `date-range`).

use std::time::Duration;

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
    let (y, m, d) = civil_from_days((secs / 86400) as i64);
    let rem = secs % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// RFC 5322 `Date:` in UTC.
pub fn rfc5322(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86400;
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: (year, month 1-12, day 1-31).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
