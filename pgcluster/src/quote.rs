//! Quoting and encoding for `postgresql.conf`, libpq connection strings,
//! SQL and URLs.

use std::fmt::Write as _;

/// Quotes a value for postgresql.conf (already-quoted values are kept).
pub(crate) fn quote_setting(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
    }
}

/// Quotes a value for a libpq connection string.
pub(crate) fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_setting("logical"), "'logical'");
        assert_eq!(quote_setting("it's"), "'it''s'");
        assert_eq!(quote_setting("'already'"), "'already'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("o'k"), "'o''k'");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(percent_encode("aZ9-._~ @/:%"), "aZ9-._~%20%40%2F%3A%25");
    }
}
