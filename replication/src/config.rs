//! Connection settings, from a `postgres://` URL or built by hand.

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// How to use TLS, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS if the server offers it, without verifying the certificate.
    #[default]
    Prefer,
    /// Require TLS, without verifying the certificate.
    Require,
    /// Require TLS and verify the certificate chain and the host name.
    VerifyFull,
}

/// Where and as whom to connect.
///
/// ```
/// use replication::{ConnectConfig, SslMode};
/// let c = ConnectConfig::from_url("postgres://rep:s%40cret@db.example:6543/app?sslmode=require").unwrap();
/// assert_eq!((c.user.as_str(), c.password.as_deref(), c.port), ("rep", Some("s@cret"), 6543));
/// assert_eq!((c.dbname.as_str(), c.ssl_mode), ("app", SslMode::Require));
/// ```
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    pub ssl_mode: SslMode,
    /// PEM file of the certificate authorities trusted for `verify-full`; the WebPKI roots
    /// when absent.
    pub ssl_root_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
            application_name: "triptrip-replication".into(),
            ssl_mode: SslMode::default(),
            ssl_root_cert: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectConfig {
    /// Parses `postgres[ql]://[user[:password]@]host[:port][/dbname][?param=value&…]`.
    ///
    /// Parameters: `sslmode` (disable, prefer, require, verify-full), `sslrootcert`,
    /// `application_name`, `connect_timeout` (seconds). Unknown parameters are an error so
    /// that a typo does not silently weaken security.
    pub fn from_url(url: &str) -> Result<ConnectConfig, Error> {
        let bad = |why: &str| Error::Config(format!("{why} in connection URL"));
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("expected postgres:// or postgresql://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut config = ConnectConfig::default();
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                config.user = percent_decode(user).ok_or_else(|| bad("bad %-escape in user"))?;
            }
            if let Some(p) = password {
                config.password =
                    Some(percent_decode(p).ok_or_else(|| bad("bad %-escape in password"))?);
            }
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
                (h, after.strip_prefix(':'))
            }
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        if !host.is_empty() {
            config.host = percent_decode(host).ok_or_else(|| bad("bad %-escape in host"))?;
        }
        if let Some(port) = port {
            config.port = port.parse().map_err(|_| bad("invalid port"))?;
        }
        if !path.is_empty() {
            config.dbname = percent_decode(path).ok_or_else(|| bad("bad %-escape in dbname"))?;
        }
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("parameter without ="))?;
            let value = percent_decode(value).ok_or_else(|| bad("bad %-escape in parameter"))?;
            match key {
                "sslmode" => {
                    config.ssl_mode = match value.as_str() {
                        "disable" => SslMode::Disable,
                        "prefer" | "allow" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(Error::Config(format!(
                            "unsupported sslmode {other:?} (disable, prefer, require, verify-full)"
                        )))
                        }
                    }
                }
                "sslrootcert" => config.ssl_root_cert = Some(value.into()),
                "application_name" => config.application_name = value,
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| bad("invalid connect_timeout"))?;
                    config.connect_timeout = Duration::from_secs(secs.max(1));
                }
                other => {
                    return Err(Error::Config(format!(
                        "unknown connection parameter {other:?}"
                    )))
                }
            }
        }
        Ok(config)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_url() {
        let c = ConnectConfig::from_url(
            "postgresql://u%20x:p%3Aw@127.0.0.1:5499/my%20db?sslmode=verify-full&sslrootcert=/ca.pem&application_name=a&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(c.user, "u x");
        assert_eq!(c.password.as_deref(), Some("p:w"));
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 5499);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.application_name, "a");
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn parses_ipv6_and_defaults() {
        let c = ConnectConfig::from_url("postgres://[::1]:6000").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 6000));
        assert_eq!(
            (c.user.as_str(), c.dbname.as_str()),
            ("postgres", "postgres")
        );
        assert_eq!(c.password, None);
    }

    #[test]
    fn rejects_malformed_urls() {
        for url in [
            "mysql://x",
            "postgres://h:notaport/db",
            "postgres://h/db?sslmode=bogus",
            "postgres://h/db?sslmod=require",
            "postgres://h/db?sslmode",
            "postgres://u:%zz@h/db",
            "postgres://[::1/db",
            "postgres://h:99999/db",
        ] {
            assert!(
                ConnectConfig::from_url(url).is_err(),
                "{url} should be rejected"
            );
        }
    }
}
