//! How numbers read, in the terminal tables and in the report alike.

use gradsweep_shared::results::CellBracket;
use gradsweep_shared::stats::Summary;

/// A real number to four decimals, or in scientific notation when it is
/// very large or very small; `-` when it is not finite.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) { format!("{x:.3e}") } else { format!("{x:.4}") }
}

/// A tick label: three significant digits at most, trailing zeros
/// dropped (`0.25`, `1200`, `3.2e-5`).
pub fn short(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a < 1e-12 {
        return "0".into();
    }
    if (1e-3..1e5).contains(&a) {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{x:.decimals$}");
        return if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    }
    let s = format!("{x:.2e}");
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
    format!("{m}e{e}")
}

/// A count (or a mean of counts): whole numbers as such, others to one decimal.
pub fn count(x: f64) -> String {
    if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// A mean with its 95 % interval across seeds (`-` for none).
pub fn pm(s: Summary) -> String {
    if s.count == 0 {
        "-".into()
    } else if s.ci95.is_finite() {
        format!("{}±{}", num(s.mean), num(s.ci95))
    } else {
        num(s.mean)
    }
}

/// A cell bracket as it reads (`-` for none): never a point estimate.
pub fn bracket(b: Option<&CellBracket>, fmt: impl Fn(f64) -> String) -> String {
    b.map_or("-".into(), |b| b.display(fmt))
}

/// `s` escaped for HTML text and attribute values.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since the Unix epoch as a UTC date and time
/// (`2026-12-02 10:40:14 UTC`), or `-` for none.
pub fn utc(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Seconds as they read to a person: `42 s`, `3.5 min`, `2.1 h`.
pub fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        "-".into()
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_the_same_everywhere() {
        assert_eq!(num(0.5), "0.5000");
        assert_eq!(num(1.5e-7), "1.500e-7");
        assert_eq!(num(f64::NAN), "-");
        assert_eq!(count(3.0), "3");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(10.0), "10");
        assert_eq!(short(1234.6), "1235");
        assert_eq!(short(3.2e-5), "3.2e-5");
        assert_eq!(short(1e-4), "1e-4");
        assert_eq!(short(0.0), "0");
        assert_eq!(count(2.5), "2.5");
        assert_eq!(html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_000), "1970-01-01 00:00:01 UTC");
        // 2026-12-02 10:40:14 UTC.
        assert_eq!(utc(1_796_208_014_000), "2026-12-02 10:40:14 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_550_861_000), "2025-12-01 01:01:01 UTC");
        assert_eq!(duration(42.0), "42.0 s");
        assert_eq!(duration(300.0), "5.0 min");
    }
}
