//! Calendar arithmetic on milliseconds since the Unix epoch, in UTC: the
//! time-of-day and day-of-week conditions and the dates of scheduled
//! rules. Kept here (a few lines of civil-date arithmetic) rather than
//! pulling a calendar library into a crate that only needs UTC.

use std::fmt;

const MS_PER_DAY: u64 = 86_400_000;
const MS_PER_MINUTE: u64 = 60_000;

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// The UTC day of the week of `time_ms`.
    pub fn of(time_ms: u64) -> Weekday {
        // 1970-01-01 was a Thursday.
        Weekday::ALL[((time_ms / MS_PER_DAY + 3) % 7) as usize]
    }

    pub fn name(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// `mon`, `monday`, `Mon`...
    pub fn parse(text: &str) -> Option<Weekday> {
        let lower = text.trim().to_ascii_lowercase();
        Weekday::ALL.into_iter().find(|d| {
            lower == d.name()
                || lower
                    == match d {
                        Weekday::Mon => "monday",
                        Weekday::Tue => "tuesday",
                        Weekday::Wed => "wednesday",
                        Weekday::Thu => "thursday",
                        Weekday::Fri => "friday",
                        Weekday::Sat => "saturday",
                        Weekday::Sun => "sunday",
                    }
        })
    }
}

/// A set of days of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Days(u8);

impl Days {
    pub fn insert(&mut self, day: Weekday) {
        self.0 |= 1 << day as u8;
    }

    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day as u8) != 0
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Weekday::ALL
            .into_iter()
            .filter(|d| self.contains(*d))
            .map(Weekday::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// A daily window of UTC time, `HH:MM-HH:MM`: the start minute included,
/// the end excluded. A start later than the end wraps over midnight
/// (`22:00-06:00` is the night).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    /// Minutes after midnight, 0..1440.
    pub start_min: u16,
    /// Minutes after midnight, 1..=1440 (`24:00` is the end of the day).
    pub end_min: u16,
}

impl Hours {
    /// `08:00-18:00`; the error completes "hours ...".
    pub fn parse(text: &str) -> Result<Hours, String> {
        let expected = || {
            format!(
                "`{}` is not a daily window; write `HH:MM-HH:MM` in UTC (e.g. `08:00-18:00`, or `22:00-06:00` over midnight)",
                text.escape_debug()
            )
        };
        let (a, b) = text.split_once('-').ok_or_else(expected)?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (start_min, end_min) = (
            minute(a).ok_or_else(expected)?,
            minute(b).ok_or_else(expected)?,
        );
        if start_min == 1440 {
            return Err(expected());
        }
        if start_min == end_min {
            return Err(format!(
                "`{}` is empty (start equals end); leave `hours` out to match at any time",
                text.escape_debug()
            ));
        }
        Ok(Hours { start_min, end_min })
    }

    pub fn contains(self, time_ms: u64) -> bool {
        let minute = ((time_ms % MS_PER_DAY) / MS_PER_MINUTE) as u16;
        if self.start_min < self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A TOML date or date-time as milliseconds since the Unix epoch. A date
/// alone is midnight UTC; a date-time must say its offset (`Z` for UTC), so
/// no rule depends on the time zone of the machine that reads it.
pub fn datetime_ms(value: &toml::value::Datetime) -> Result<u64, String> {
    use toml::value::Offset;
    let Some(date) = value.date else {
        return Err(format!(
            "`{value}` has no date; write a date (`2026-12-01`) or a date-time with its offset (`2026-12-01T08:00:00Z`)"
        ));
    };
    let days = days_from_civil(i64::from(date.year), date.month, date.day);
    let (time_ms, offset_min) = match (value.time, value.offset) {
        (None, _) => (0, 0),
        (Some(_), None) => {
            return Err(format!(
                "`{value}` has no offset; add `Z` for UTC (e.g. `{value}Z`) or `+01:00`"
            ));
        }
        (Some(t), Some(offset)) => {
            let ms = (i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second))
                * 1000
                + i64::from(t.nanosecond / 1_000_000);
            let offset = match offset {
                Offset::Z => 0,
                Offset::Custom { minutes } => i64::from(minutes),
            };
            (ms, offset)
        }
    };
    let ms = days * MS_PER_DAY as i64 + time_ms - offset_min * MS_PER_MINUTE as i64;
    u64::try_from(ms).map_err(|_| format!("`{value}` is before 1970"))
}

/// `2026-12-01T08:00:00Z` (whole seconds; milliseconds when there are
/// some), for explanations and the CLI.
pub fn format_ms(time_ms: u64) -> String {
    let days = (time_ms / MS_PER_DAY) as i64;
    // H. Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rest = time_ms % MS_PER_DAY;
    let (h, m, s, ms) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    if ms == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dt(text: &str) -> Result<u64, String> {
        datetime_ms(&text.parse().unwrap())
    }

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(dt("1970-01-01").unwrap(), 0);
        assert_eq!(dt("2000-03-01T00:00:00Z").unwrap(), 951_868_800_000);
        let t = dt("2026-11-27T21:52:15Z").unwrap();
        assert_eq!(t, 1_795_816_335_000);
        assert_eq!(format_ms(t), "2026-11-27T21:52:15Z");
        assert_eq!(format_ms(t + 5), "2026-11-27T21:52:15.005Z");
        assert_eq!(dt("2026-11-27T22:52:15+01:00").unwrap(), t);
        assert!(dt("2026-11-27T21:52:15").unwrap_err().contains("offset"));
        assert!(dt("21:52:15").unwrap_err().contains("no date"));
        assert_eq!(format_ms(dt("2024-02-29").unwrap()), "2024-02-29T00:00:00Z");
    }

    #[test]
    fn weekdays_are_utc() {
        assert_eq!(Weekday::of(0), Weekday::Thu);
        // 2026-11-27 is a Friday; its last millisecond too, not the next.
        let friday = dt("2026-11-27").unwrap();
        assert_eq!(Weekday::of(friday), Weekday::Fri);
        assert_eq!(Weekday::of(friday + MS_PER_DAY - 1), Weekday::Fri);
        assert_eq!(Weekday::of(friday + MS_PER_DAY), Weekday::Sat);
        assert_eq!(Weekday::parse("Monday"), Some(Weekday::Mon));
        assert_eq!(Weekday::parse("lundi"), None);
    }

    #[test]
    fn hours_include_the_start_and_exclude_the_end() {
        let day = dt("2026-11-27").unwrap();
        let at = |h: u64, m: u64| day + h * 3_600_000 + m * 60_000;
        let office = Hours::parse("08:00-18:00").unwrap();
        assert!(!office.contains(at(7, 59)));
        assert!(office.contains(at(8, 0)));
        assert!(office.contains(at(17, 59)));
        assert!(!office.contains(at(18, 0)));
        let night = Hours::parse("22:00-06:00").unwrap();
        assert!(
            night.contains(at(23, 30)) && night.contains(at(0, 0)) && night.contains(at(5, 59))
        );
        assert!(
            !night.contains(at(6, 0)) && !night.contains(at(12, 0)) && !night.contains(at(21, 59))
        );
        assert_eq!(night.to_string(), "22:00-06:00");
        let all_evening = Hours::parse("18:00-24:00").unwrap();
        assert!(all_evening.contains(at(23, 59)) && !all_evening.contains(at(0, 0)));
        for bad in [
            "8-18",
            "08:00",
            "08:00-08:00",
            "25:00-26:00",
            "08:60-09:00",
            "24:00-01:00",
        ] {
            assert!(Hours::parse(bad).is_err(), "{bad}");
        }
    }
}
