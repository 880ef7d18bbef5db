//! Durations on the command line: `90s`, `30m`, `1h`, `7d`, combinations such as
//! `1h30m`, or a bare number of seconds.

use std::time::Duration;

/// Longest duration accepted: 100 years, far beyond any sane TTL.
const MAX_SECS: u64 = 100 * 365 * 24 * 3600;

/// Parses a duration, with an error that quotes the input and says what is expected.
pub fn parse(input: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {input:?}: expected e.g. 90s, 30m, 1h, 1h30m, 7d or seconds");
    if input.is_empty() {
        return Err(invalid());
    }
    if let Ok(secs) = input.parse::<u64>() {
        return bounded(secs, input);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in input.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(invalid()),
        };
        let n: u64 = digits.parse().map_err(|_| invalid())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(invalid)?;
    }
    if !digits.is_empty() {
        return Err(invalid());
    }
    bounded(total, input)
}

fn bounded(secs: u64, input: &str) -> Result<Duration, String> {
    if secs > MAX_SECS {
        return Err(format!("duration {input:?} is longer than 100 years"));
    }
    Ok(Duration::from_secs(secs))
}

/// Formats seconds the way [`parse`] reads them, e.g. `1h30m`.
pub fn format(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, name) in [(86400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if rest >= unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        for (input, secs) in [
            ("0", 0),
            ("3600", 3600),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("1h30m", 5400),
            ("7d", 604800),
            ("1d2h3m4s", 93784),
        ] {
            assert_eq!(parse(input), Ok(Duration::from_secs(secs)), "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for input in [
            "",
            "h",
            "1x",
            "1h30",
            "-1h",
            "1.5h",
            " 1h",
            "1H",
            "99999999999999999999d",
        ] {
            let err = parse(input).err().unwrap_or_default();
            assert!(err.contains(&format!("{input:?}")), "{input}: {err}");
        }
        assert!(parse("36501d").is_err());
    }

    #[test]
    fn format_round_trips() {
        for secs in [0, 1, 59, 60, 3600, 5400, 86400, 93784] {
            assert_eq!(parse(&format(secs)), Ok(Duration::from_secs(secs)));
        }
    }
}
