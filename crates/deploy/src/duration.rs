//! Durations as compose files write them: `1m30s`, `10s`, `500ms`, `1h`,
//! `1.5s` — numbers (with an optional fraction) each followed by a unit
//! (`h`, `m`, `s`, `ms`, `us`/`µs`, `ns`), summed. A bare `0` is zero; any other
//! number without a unit is refused rather than guessed at (seconds? ms?).

use std::time::Duration;

const UNITS: &[(&str, u128)] = &[
    // Longest first, so that `ms` is not read as `m` followed by `s`.
    ("ms", 1_000_000),
    ("us", 1_000),
    ("µs", 1_000),
    ("ns", 1),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
];

/// Parses a compose duration; the error says what was wrong with `text`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    // The input is quoted in messages; a huge one is cut short.
    let shown: String = if s.chars().count() > 40 {
        s.chars().take(40).chain(std::iter::once('…')).collect()
    } else {
        s.to_string()
    };
    if s.is_empty() {
        return Err("expected a duration such as 10s, 1m30s or 500ms, found nothing".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("`{shown}` is negative; durations cannot be"));
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(format!(
                "`{shown}` is not a duration; write it like 10s, 1m30s, 500ms or 1h"
            ));
        }
        let Some((unit, unit_nanos)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
            return Err(if after.is_empty() {
                format!("`{shown}` has no unit; write it like 10s, 500ms or 1m")
            } else {
                format!("`{shown}` has an unknown unit; use h, m, s, ms, us or ns")
            });
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let too_long = || format!("`{shown}` is too long a duration");
        let mut nanos: u128 = 0;
        for d in whole.bytes() {
            nanos = nanos
                .checked_mul(10)
                .and_then(|n| n.checked_add(u128::from(d - b'0')))
                .ok_or_else(too_long)?;
            // Anything past u64 nanoseconds is refused below anyway; stopping
            // early keeps a long digit string from overflowing the product.
            if nanos > u128::from(u64::MAX) {
                return Err(too_long());
            }
        }
        nanos = nanos.checked_mul(*unit_nanos).ok_or_else(too_long)?;
        // A fraction finer than a nanosecond is dropped; 19 digits are plenty.
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for d in fraction.bytes().take(19) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        nanos += frac * unit_nanos / scale;
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        if total > u128::from(u64::MAX) {
            return Err(too_long());
        }
        rest = &after[unit.len()..];
    }
    let nanos = u64::try_from(total).map_err(|_| format!("`{shown}` is too long a duration"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Writes `d` the way [`parse`] reads it back (`1h2m3s4ms`; `0s` for zero).
pub fn format(d: Duration) -> String {
    let mut n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let count = n / size;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(unit);
            n %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_compose_durations() {
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("2us"), Ok(Duration::from_micros(2)));
        assert_eq!(parse("2µs"), Ok(Duration::from_micros(2)));
        assert_eq!(parse("3ns"), Ok(Duration::from_nanos(3)));
        assert_eq!(parse("1h1m1s1ms"), Ok(Duration::from_millis(3_661_001)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 0s "), Ok(Duration::ZERO));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        assert!(parse("10").expect_err("an error").contains("has no unit"));
        assert!(parse("10x").expect_err("an error").contains("unknown unit"));
        assert!(parse("-1s").expect_err("an error").contains("negative"));
        assert!(parse("s").expect_err("an error").contains("not a duration"));
        assert!(parse("1..2s")
            .expect_err("an error")
            .contains("not a duration"));
        assert!(parse("").expect_err("an error").contains("found nothing"));
        assert!(parse("99999999999999999999999h")
            .expect_err("an error")
            .contains("too long"));
        assert!(parse("6000000h")
            .expect_err("an error")
            .contains("too long"));
    }

    #[test]
    fn formats_like_compose() {
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_millis(3_661_001)), "1h1m1s1ms");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(nanos in any::<u64>()) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,24}") {
            let _ = parse(&s);
        }
    }
}
