//! Signal parsing for `kill`: numbers (`9`), names with or without the `SIG` prefix, any case.

use std::str::FromStr;

use nix::sys::signal::Signal;

use crate::error::{Result, RuntimeError};

/// Parses `TERM`, `SIGTERM`, `sigterm`, `15` into a signal.
pub fn parse_signal(s: &str) -> Result<Signal> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::InvalidSignal(s.to_owned()));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| RuntimeError::InvalidSignal(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("kill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("USR1").unwrap(), Signal::SIGUSR1);
    }

    #[test]
    fn rejects_unknown() {
        for bad in ["", "0", "65", "-1", "NOPE", "SIG", "9x"] {
            let err = parse_signal(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("unknown signal"),
                "{bad}: {err}"
            );
        }
    }
}
