//! Durations on the command line: a number followed by a unit, as in `500ms`,
//! `2s`, `1.5min`.
//!
//! Units: `us`, `ms`, `s`, `min`, `h`. The unit is required: a bare `5` is
//! rejected rather than guessed. The number may have a decimal fraction;
//! the result is exact to the nanosecond (integer arithmetic, no floats).

use std::time::Duration;

/// Why a duration could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("duration `{0}` has no unit (use us, ms, s, min or h)")]
    MissingUnit(String),
    #[error("duration `{input}` has unknown unit `{unit}` (use us, ms, s, min or h)")]
    UnknownUnit { input: String, unit: String },
    #[error("duration `{0}` does not start with a number")]
    InvalidNumber(String),
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Fraction digits beyond this are below a nanosecond for every unit and are
/// dropped; keeping them would only risk overflow.
const MAX_FRACTION_DIGITS: usize = 18;

fn unit_nanos(unit: &str) -> Option<u128> {
    match unit {
        "us" => Some(1_000),
        "ms" => Some(1_000_000),
        "s" => Some(NANOS_PER_SEC),
        "min" => Some(60 * NANOS_PER_SEC),
        "h" => Some(3_600 * NANOS_PER_SEC),
        _ => None,
    }
}

/// Parses `NUMBER UNIT` (no space) into a [`Duration`].
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let number_len = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(number_len);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    // At least one digit, at most one dot (a second dot is left in `fraction`).
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(DurationError::InvalidNumber(input.to_owned()));
    }
    if unit.is_empty() {
        return Err(DurationError::MissingUnit(input.to_owned()));
    }
    let Some(scale) = unit_nanos(unit) else {
        return Err(DurationError::UnknownUnit {
            input: input.to_owned(),
            unit: unit.to_owned(),
        });
    };
    let overflow = || DurationError::Overflow(input.to_owned());

    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| overflow())?
    };
    let fraction = fraction.get(..MAX_FRACTION_DIGITS).unwrap_or(fraction);
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits = u32::try_from(fraction.len()).map_err(|_| overflow())?;
        let value: u128 = fraction.parse().map_err(|_| overflow())?;
        value * scale / 10u128.pow(digits)
    };
    let nanos = whole_value
        .checked_mul(scale)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(overflow)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| overflow())?;
    // The remainder is below 10^9 and always fits.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).map_err(|_| overflow())?;
    Ok(Duration::new(secs, subsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_each_unit() {
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn accepts_fractions_exactly() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25min"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        // Digits below a nanosecond are dropped, not rounded or rejected.
        assert_eq!(
            parse_duration("1.0000000000000000000009s"),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn rejects_missing_unit() {
        assert_eq!(
            parse_duration("5"),
            Err(DurationError::MissingUnit("5".into()))
        );
    }

    #[test]
    fn rejects_unknown_unit() {
        assert_eq!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit {
                input: "5sec".into(),
                unit: "sec".into()
            })
        );
        // Units are case-sensitive: `M` could mean minutes or months.
        assert!(matches!(
            parse_duration("5S"),
            Err(DurationError::UnknownUnit { .. })
        ));
        // No space between number and unit.
        assert!(matches!(
            parse_duration("5 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn rejects_bad_numbers() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for input in ["s", "-1s", "+1s", ".s", "1.2.3s", "abc"] {
            assert_eq!(
                parse_duration(input),
                Err(DurationError::InvalidNumber(input.into())),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_overflow() {
        let huge = format!("{}h", u64::MAX);
        assert_eq!(parse_duration(&huge), Err(DurationError::Overflow(huge)));
        let digits = "9".repeat(60) + "s";
        assert_eq!(
            parse_duration(&digits),
            Err(DurationError::Overflow(digits))
        );
    }

    #[test]
    fn messages_name_the_input() {
        let err = parse_duration("5sec").unwrap_err().to_string();
        assert_eq!(
            err,
            "duration `5sec` has unknown unit `sec` (use us, ms, s, min or h)"
        );
    }
}
