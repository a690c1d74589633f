//! UTC calendar dates as mail and its reports write them: the RFC 5322 §3.3 `Date:`
//! form, RFC 3339 §5.6 timestamps, and the fields other formats (e.g. `postqueue -p`'s)
//! are built from. Pure arithmetic on Unix seconds: nothing here reads a clock.

/// A Unix time broken down into its UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i64,
    /// 1–12.
    pub month: u8,
    /// 1–31.
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u8,
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl UtcDateTime {
    /// The calendar fields of `unix` seconds since 1970-01-01T00:00:00Z (negative
    /// values are before it); the civil date by H. Hinnant's `civil_from_days`.
    pub fn from_unix(unix: i64) -> Self {
        let days = unix.div_euclid(86_400);
        let secs = unix.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7);
        // Every field below is in range by construction (day 1–31, month 1–12,
        // seconds of a day < 86,400), so the narrowing casts cannot truncate.
        UtcDateTime {
            year,
            month: month as u8,
            day: day as u8,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            weekday: weekday as u8,
        }
    }

    /// `Sun` … `Sat`.
    pub fn weekday_name(&self) -> &'static str {
        WEEKDAYS[usize::from(self.weekday % 7)]
    }

    /// `Jan` … `Dec`.
    pub fn month_name(&self) -> &'static str {
        MONTHS[usize::from(self.month.clamp(1, 12) - 1)]
    }

    /// `HH:MM:SS`.
    pub fn time_of_day(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }

    /// RFC 5322 §3.3 date-time in UTC: `Thu, 01 Jan 1970 00:00:00 +0000`.
    pub fn rfc5322(&self) -> String {
        format!(
            "{}, {:02} {} {} {} +0000",
            self.weekday_name(),
            self.day,
            self.month_name(),
            self.year,
            self.time_of_day()
        )
    }

    /// RFC 3339 §5.6 in UTC: `1970-01-01T00:00:00Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{}Z",
            self.year,
            self.month,
            self.day,
            self.time_of_day()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::UtcDateTime;

    #[test]
    fn known_dates() {
        let cases: [(i64, &str, &str); 6] = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000", "1970-01-01T00:00:00Z"),
            (
                -1,
                "Wed, 31 Dec 1969 23:59:59 +0000",
                "1969-12-31T23:59:59Z",
            ),
            (
                951_782_400,
                "Tue, 29 Feb 2000 00:00:00 +0000",
                "2000-02-29T00:00:00Z",
            ),
            (
                1_709_251_199,
                "Thu, 29 Feb 2024 23:59:59 +0000",
                "2024-02-29T23:59:59Z",
            ),
            (
                1_796_352_455,
                "Fri, 04 Dec 2026 02:47:35 +0000",
                "2026-12-04T02:47:35Z",
            ),
            (
                4_133_980_799,
                "Fri, 31 Dec 2100 23:59:59 +0000",
                "2100-12-31T23:59:59Z",
            ),
        ];
        for (unix, rfc5322, rfc3339) in cases {
            let t = UtcDateTime::from_unix(unix);
            assert_eq!(t.rfc5322(), rfc5322, "{unix}");
            assert_eq!(t.rfc3339(), rfc3339, "{unix}");
        }
    }

    #[test]
    fn every_day_of_four_centuries_is_one_after_the_previous() {
        let mut prev = UtcDateTime::from_unix(0);
        for day in 1..146_097_i64 {
            let t = UtcDateTime::from_unix(day * 86_400);
            assert_eq!(t.weekday, (prev.weekday + 1) % 7);
            let next_day = t.day == prev.day + 1 && t.month == prev.month;
            let next_month =
                t.day == 1 && (t.month == prev.month + 1 || (t.month == 1 && prev.month == 12));
            assert!(next_day || next_month, "{prev:?} -> {t:?}");
            prev = t;
        }
    }
}
