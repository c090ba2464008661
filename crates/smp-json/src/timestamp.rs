//! ISO 8601 timestamps and dates as SMP messages carry them.
//!
//! Accepted: `YYYY-MM-DDTHH:MM[:SS[.f{1,9}]]` then `Z` or `±HH:MM` (or
//! `±HHMM`); years 0001 to 9999. Written back as Python's `isoformat()`
//! does: `YYYY-MM-DDTHH:MM:SS[.ffffff]+HH:MM`, keeping the offset.

/// A parsed timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
    /// The UTC offset in minutes.
    pub offset_minutes: i16,
}

fn digits(s: &[u8], n: usize) -> Option<u32> {
    if s.len() < n {
        return None;
    }
    let mut v = 0u32;
    for &b in &s[..n] {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u32;
    }
    Some(v)
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD` at the start of `s`.
fn parse_date_prefix(s: &[u8]) -> Option<(u16, u8, u8)> {
    if s.len() < 10 || s[4] != b'-' || s[7] != b'-' {
        return None;
    }
    let y = digits(s, 4)?;
    let m = digits(&s[5..], 2)?;
    let d = digits(&s[8..], 2)?;
    if y == 0 || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some((y as u16, m as u8, d as u8))
}

/// Parses a date `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<(u16, u8, u8)> {
    let b = s.as_bytes();
    if b.len() != 10 {
        return None;
    }
    parse_date_prefix(b)
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Converts days since 1970-01-01 to a civil date.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The optional `:SS` and fraction after the minutes: seconds,
/// microseconds (a fraction of 1 to 9 digits, cut to 6) and what follows.
fn parse_seconds(rest: &[u8]) -> Option<(u32, u32, &[u8])> {
    if rest.first() != Some(&b':') {
        return Some((0, 0, rest));
    }
    let second = digits(&rest[1..], 2)?;
    let rest = &rest[3..];
    if !matches!(rest.first(), Some(b'.') | Some(b',')) {
        return Some((second, 0, rest));
    }
    let fraction = &rest[1..];
    let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 9 {
        return None;
    }
    let mut micros = digits(fraction, n.min(6))?;
    for _ in n..6 {
        micros *= 10;
    }
    Some((second, micros, &fraction[n..]))
}

/// The offset: `Z`, or `+HH:MM` / `+HHMM` (or `-`), in minutes.
fn parse_offset(tz: &[u8]) -> Option<i16> {
    match tz {
        [b'Z'] | [b'z'] => Some(0),
        [sign @ (b'+' | b'-'), ..] => {
            let (h, m) = match tz.len() {
                6 if tz[3] == b':' => (digits(&tz[1..], 2)?, digits(&tz[4..], 2)?),
                5 => (digits(&tz[1..], 2)?, digits(&tz[3..], 2)?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let v = (h * 60 + m) as i16;
            Some(if *sign == b'-' { -v } else { v })
        }
        _ => None,
    }
}

impl Timestamp {
    /// Parses an ISO 8601 date-time with an offset.
    pub fn parse(s: &str) -> Option<Timestamp> {
        let b = s.as_bytes();
        let (year, month, day) = parse_date_prefix(b)?;
        let rest = &b[10..];
        if rest.len() < 6 || !matches!(rest[0], b'T' | b't' | b' ') || rest[3] != b':' {
            return None;
        }
        let hour = digits(&rest[1..], 2)?;
        let minute = digits(&rest[4..], 2)?;
        let (second, micros, tz) = parse_seconds(&rest[6..])?;
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let offset_minutes = parse_offset(tz)?;
        Some(Timestamp {
            year,
            month,
            day,
            hour: hour as u8,
            minute: minute as u8,
            second: second as u8,
            micros,
            offset_minutes,
        })
    }

    /// Microseconds since the Unix epoch (UTC).
    pub fn unix_micros(&self) -> i64 {
        let days = days_from_civil(self.year as i64, self.month as u32, self.day as u32);
        let secs = days * 86400 + self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64
            - self.offset_minutes as i64 * 60;
        secs * 1_000_000 + self.micros as i64
    }

    /// A UTC timestamp from microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Timestamp {
        let secs = micros.div_euclid(1_000_000);
        let days = secs.div_euclid(86400);
        let sod = secs.rem_euclid(86400);
        let (y, m, d) = civil_from_days(days);
        Timestamp {
            year: y.clamp(1, 9999) as u16,
            month: m as u8,
            day: d as u8,
            hour: (sod / 3600) as u8,
            minute: (sod / 60 % 60) as u8,
            second: (sod % 60) as u8,
            micros: micros.rem_euclid(1_000_000) as u32,
            offset_minutes: 0,
        }
    }

    /// Now, in UTC.
    pub fn now() -> Timestamp {
        Timestamp::from_unix_micros(now_micros())
    }

    /// Writes it the way Python's `isoformat()` does.
    pub fn to_iso(&self) -> String {
        let mut s = Vec::with_capacity(32);
        put_digits(&mut s, self.year.into(), 4);
        for (sep, value) in [
            (b'-', self.month),
            (b'-', self.day),
            (b'T', self.hour),
            (b':', self.minute),
            (b':', self.second),
        ] {
            s.push(sep);
            put_digits(&mut s, value.into(), 2);
        }
        if self.micros != 0 {
            s.push(b'.');
            put_digits(&mut s, self.micros, 6);
        }
        let off = self.offset_minutes;
        s.push(if off < 0 { b'-' } else { b'+' });
        let off = off.unsigned_abs();
        put_digits(&mut s, (off / 60).into(), 2);
        s.push(b':');
        put_digits(&mut s, (off % 60).into(), 2);
        // Only ASCII digits and separators were written.
        String::from_utf8(s).unwrap_or_default()
    }
}

/// Appends `value` in decimal, zero-padded to `width` digits (more digits
/// if it needs them, as `{:0width$}` does).
fn put_digits(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut v = value;
    let mut n = 0;
    while v > 0 || n == 0 {
        buf[9 - n] = b'0' + (v % 10) as u8;
        v /= 10;
        n += 1;
    }
    let n = n.max(width.min(10));
    out.extend_from_slice(&buf[10 - n..]);
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_written_as_format_pads_them() {
        for (value, width) in [
            (0, 2),
            (7, 2),
            (59, 2),
            (0, 4),
            (999, 4),
            (2023, 4),
            (12345, 4),
            (1, 6),
            (123456, 6),
            (u32::MAX, 2),
        ] {
            let mut out = Vec::new();
            put_digits(&mut out, value, width);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{value:0width$}"));
        }
    }

    #[test]
    fn parses_and_writes_back() {
        let cases = [
            ("2023-01-01T12:00:00+00:00", "2023-01-01T12:00:00+00:00"),
            ("2023-01-01T12:00:00Z", "2023-01-01T12:00:00+00:00"),
            ("2023-01-01T12:00:00.5+02:30", "2023-01-01T12:00:00.500000+02:30"),
            (
                "2023-01-01T12:00:00.1234567-05:00",
                "2023-01-01T12:00:00.123456-05:00",
            ),
            ("2023-01-01T12:00+0100", "2023-01-01T12:00:00+01:00"),
            (
                "9999-12-31T23:59:59.999999+00:00",
                "9999-12-31T23:59:59.999999+00:00",
            ),
            ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00+00:00"),
        ];
        for (input, output) in cases {
            assert_eq!(Timestamp::parse(input).unwrap().to_iso(), output, "{input}");
        }
    }

    #[test]
    fn rejects_bad_timestamps() {
        for bad in [
            "2023-01-01T12:00:00",
            "2023-01-01",
            "2023-13-01T12:00:00Z",
            "2023-02-29T12:00:00Z",
            "2023-01-01T24:00:00Z",
            "2023-01-01T12:60:00Z",
            "2023-01-01T12:00:00.Z",
            "2023-01-01T12:00:00+24:00",
            "0000-01-01T00:00:00Z",
            "2023-01-01T12:00:00Zx",
            "23-01-01T12:00:00Z",
            "",
        ] {
            assert!(Timestamp::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn unix_time() {
        let t = Timestamp::parse("1970-01-01T01:00:00+01:00").unwrap();
        assert_eq!(t.unix_micros(), 0);
        let t = Timestamp::parse("2023-01-01T12:00:00.000001Z").unwrap();
        assert_eq!(t.unix_micros(), 1_672_574_400_000_001);
        assert_eq!(Timestamp::from_unix_micros(1_672_574_400_000_001), t);
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("2020-02-29"), Some((2020, 2, 29)));
        assert_eq!(parse_date("2021-02-29"), None);
        assert_eq!(parse_date("2021-02-1"), None);
        assert_eq!(parse_date("2021-02-01T"), None);
    }
}
