//! Durations on the command line: `90`, `90s`, `10m`, `2h`, `1d`, at most
//! [`MAX`]. Parsed with checked arithmetic and bounded, so a typo like
//! `18446744073709551615` is a clap error naming the flag, never an
//! overflow later (deadlines are `now + duration`).

use std::time::Duration;

/// The longest duration any flag takes: a year. Longer is a typo, and the
/// bound keeps every `now + duration` far from overflowing.
pub const MAX: Duration = Duration::from_secs(365 * 86_400);

pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!("{text:?}: expected a duration like 30s, 10m, 2h or 1d"));
    }
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    let too_long = || format!("{text:?}: too long (at most {}d)", MAX.as_secs() / 86_400);
    // All digits: parsing fails only when the number does not fit a u64.
    let n: u64 = number.parse().map_err(|_| too_long())?;
    let total = n.checked_mul(seconds).map(Duration::from_secs).ok_or_else(too_long)?;
    if total > MAX {
        return Err(too_long());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse("10x").is_err());
        assert!(parse("m").is_err());
    }

    #[test]
    fn durations_are_bounded_without_overflow() {
        assert_eq!(parse("365d"), Ok(MAX));
        assert_eq!(parse("366d"), Err("\"366d\": too long (at most 365d)".into()));
        assert!(parse("18446744073709551615").is_err());
        assert!(parse("18446744073709551615d").is_err());
        assert!(parse("99999999999999999999999s").unwrap_err().contains("too long"));
    }
}
