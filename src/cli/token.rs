//! `triptrip-realtime token`: print a JWT the server (same settings, same data directory)
//! accepts.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use triptrip_realtime::auth::Verifier;
use triptrip_realtime::config::Settings;

/// Options of the `token` command.
#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user the token is for (its `sub` claim).
    #[arg(long)]
    pub(crate) user: String,

    /// A room pattern the token grants (`*` matches any run of characters, e.g. `trip:*`);
    /// repeat for several.
    #[arg(long = "room", value_name = "PATTERN")]
    pub(crate) rooms: Vec<String>,

    /// How long the token is valid: a number with a unit, `s`, `m`, `h` or `d` (e.g. `30s`,
    /// `15m`, `1h`, `7d`).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub(crate) ttl: Duration,
}

/// Signs and prints the token (just the token and a newline on stdout).
pub(crate) fn run(settings: &Settings, args: &TokenArgs) -> anyhow::Result<()> {
    let verifier = Verifier::from_settings(settings)?;
    let token = verifier.issue(&args.user, &args.rooms, args.ttl)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{token}")
        .and_then(|()| stdout.flush())
        .context("cannot write the token to stdout")
}

/// Parses `30s`, `15m`, `1h`, `7d`: a positive whole number and one unit.
pub(crate) fn parse_ttl(text: &str) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a positive number followed by s, m, h or d (e.g. 30s, 15m, 1h, 7d)";
    let text = text.trim();
    let Some(unit) = text.chars().last() else {
        return Err(format!("empty duration; {EXPECTED}"));
    };
    let seconds_per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 60 * 60,
        'd' => 24 * 60 * 60,
        _ => return Err(format!("missing or unknown unit; {EXPECTED}")),
    };
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("not a whole number; {EXPECTED}"));
    }
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("number too large; {EXPECTED}"))?;
    if count == 0 {
        return Err("the duration must be greater than zero".to_owned());
    }
    // Keep `exp` well inside what every JWT library handles.
    const MAX_SECONDS: u64 = 100 * 365 * 24 * 60 * 60;
    match count.checked_mul(seconds_per_unit) {
        Some(seconds) if seconds <= MAX_SECONDS => Ok(Duration::from_secs(seconds)),
        _ => Err("the duration is longer than 100 years".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
    }

    #[test]
    fn ttl_rejects_zero_and_garbage() {
        for bad in [
            "0s",
            "0d",
            "000h",
            "",
            "abc",
            "1",
            "h",
            "-1h",
            "+1h",
            "1.5h",
            "1 h",
            "1hh",
            "1w",
            "1é",
            "99999999999999999999s",
            "999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_ttl("0s").unwrap_err().contains("greater than zero"));
    }
}
