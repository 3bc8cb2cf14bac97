//! One SMTP session as a state machine over lines (RFC 5321 with AUTH PLAIN/LOGIN, RFC 4954):
//! it takes a line without its CRLF and appends its replies to a buffer; it owns no socket.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::{Outcome, Shared};

/// Recipients one transaction may name.
const MAX_RECIPIENTS: usize = 100;

/// Bad commands a session may send before it is dropped.
const MAX_ERRORS: u32 = 20;

/// What the connection does after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// One line from the client, or the news that a line was longer than the limit (its bytes were
/// dropped).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Line<'a> {
    Complete(&'a [u8]),
    TooLong,
}

#[derive(Debug)]
enum State {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword { user: String },
    Data,
}

/// What the client has said in the current session.
#[derive(Debug)]
pub(crate) struct Session {
    state: State,
    helo: Option<String>,
    user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    data: Vec<u8>,
    data_too_big: bool,
    data_line_too_long: bool,
    errors: u32,
}

impl Session {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Command,
            helo: None,
            user: None,
            mail_from: None,
            rcpt_to: Vec::new(),
            data: Vec::new(),
            data_too_big: false,
            data_line_too_long: false,
            errors: 0,
        }
    }

    pub(crate) fn greeting(shared: &Shared, out: &mut Vec<u8>) {
        reply(
            out,
            &format!("220 {} ESMTP triptrip stand-in", shared.hostname),
        );
    }

    pub(crate) fn handle(&mut self, line: Line<'_>, shared: &Shared, out: &mut Vec<u8>) -> Flow {
        match self.state {
            State::Data => {
                self.data_line(line, shared, out);
                Flow::Continue
            }
            State::AuthPlain | State::AuthLoginUser | State::AuthLoginPassword { .. } => {
                self.auth_line(line, shared, out);
                Flow::Continue
            }
            State::Command => {
                let Line::Complete(line) = line else {
                    return self.error(out, "500 5.5.2 Line too long");
                };
                self.command(line, shared, out)
            }
        }
    }

    fn error(&mut self, out: &mut Vec<u8>, text: &str) -> Flow {
        self.errors += 1;
        if self.errors > MAX_ERRORS {
            reply(out, "421 4.7.0 Too many errors, closing");
            return Flow::Close;
        }
        reply(out, text);
        Flow::Continue
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
        self.data = Vec::new();
        self.data_too_big = false;
        self.data_line_too_long = false;
    }

    fn command(&mut self, line: &[u8], shared: &Shared, out: &mut Vec<u8>) -> Flow {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.error(out, "500 5.5.2 Command is not UTF-8");
        };
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, rest.trim()),
            None => (line.trim(), ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" if rest.is_empty() => {
                self.error(out, "501 5.5.4 A domain or address is required")
            }
            "EHLO" => {
                self.helo = Some(rest.to_owned());
                self.reset_transaction();
                let mut lines = vec![
                    format!("{} greets {rest}", shared.hostname),
                    "8BITMIME".to_owned(),
                    format!("SIZE {}", shared.config.max_message_bytes),
                    "PIPELINING".to_owned(),
                    "ENHANCEDSTATUSCODES".to_owned(),
                ];
                if shared.config.credentials.is_some() {
                    lines.push("AUTH PLAIN LOGIN".to_owned());
                }
                multiline_reply(out, 250, &lines);
                Flow::Continue
            }
            "HELO" => {
                self.helo = Some(rest.to_owned());
                self.reset_transaction();
                reply(out, &format!("250 {}", shared.hostname));
                Flow::Continue
            }
            "AUTH" => self.auth_command(rest, shared, out),
            "MAIL" => self.mail(rest, shared, out),
            "RCPT" => self.rcpt(rest, shared, out),
            "DATA" if !rest.is_empty() => self.error(out, "501 5.5.4 DATA takes no argument"),
            "DATA" => {
                if self.mail_from.is_none() || self.rcpt_to.is_empty() {
                    return self.error(out, "503 5.5.1 MAIL and RCPT first");
                }
                self.state = State::Data;
                reply(out, "354 End data with <CR><LF>.<CR><LF>");
                Flow::Continue
            }
            "RSET" => {
                self.reset_transaction();
                reply(out, "250 2.0.0 OK");
                Flow::Continue
            }
            "NOOP" => {
                reply(out, "250 2.0.0 OK");
                Flow::Continue
            }
            "VRFY" => {
                reply(out, "252 2.5.2 Cannot VRFY user");
                Flow::Continue
            }
            "QUIT" => {
                reply(out, "221 2.0.0 Bye");
                Flow::Close
            }
            _ => self.error(out, "502 5.5.2 Command not recognized"),
        }
    }

    fn mail(&mut self, rest: &str, shared: &Shared, out: &mut Vec<u8>) -> Flow {
        if self.helo.is_none() {
            return self.error(out, "503 5.5.1 EHLO or HELO first");
        }
        if shared.config.credentials.is_some() && self.user.is_none() {
            return self.error(out, "530 5.7.0 Authentication required");
        }
        if self.mail_from.is_some() {
            return self.error(out, "503 5.5.1 Sender already given");
        }
        let Some((path, params)) = path_argument(rest, "FROM:") else {
            return self.error(out, "501 5.5.4 Syntax: MAIL FROM:<address>");
        };
        let declared_size = params
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.eq_ignore_ascii_case("SIZE"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        if declared_size.is_some_and(|size| size > shared.config.max_message_bytes) {
            return self.error(out, "552 5.3.4 Message size exceeds fixed limit");
        }
        self.mail_from = Some(path.to_owned());
        reply(out, "250 2.1.0 OK");
        Flow::Continue
    }

    fn rcpt(&mut self, rest: &str, shared: &Shared, out: &mut Vec<u8>) -> Flow {
        if self.mail_from.is_none() {
            return self.error(out, "503 5.5.1 MAIL first");
        }
        let Some((path, _)) = path_argument(rest, "TO:") else {
            return self.error(out, "501 5.5.4 Syntax: RCPT TO:<address>");
        };
        if path.is_empty() {
            return self.error(out, "501 5.1.3 A recipient is required");
        }
        if self.rcpt_to.len() >= MAX_RECIPIENTS {
            reply(out, "452 4.5.3 Too many recipients");
            return Flow::Continue;
        }
        if shared.is_rejected(path) {
            reply(
                out,
                &format!("550 5.1.1 <{path}>: Recipient address rejected: User unknown"),
            );
            return Flow::Continue;
        }
        self.rcpt_to.push(path.to_owned());
        reply(out, "250 2.1.5 OK");
        Flow::Continue
    }

    fn data_line(&mut self, line: Line<'_>, shared: &Shared, out: &mut Vec<u8>) {
        let line = match line {
            Line::Complete(b".") => {
                self.end_of_data(shared, out);
                return;
            }
            Line::Complete(line) => line.strip_prefix(b".").unwrap_or(line),
            Line::TooLong => {
                self.data_line_too_long = true;
                return;
            }
        };
        if self.data_too_big {
            return;
        }
        if self.data.len() + line.len() + 2 > shared.config.max_message_bytes {
            self.data_too_big = true;
            self.data = Vec::new();
            return;
        }
        self.data.extend_from_slice(line);
        self.data.extend_from_slice(b"\r\n");
    }

    fn end_of_data(&mut self, shared: &Shared, out: &mut Vec<u8>) {
        self.state = State::Command;
        if self.data_line_too_long {
            reply(out, "500 5.5.6 Line too long in message");
        } else if self.data_too_big {
            reply(out, "552 5.3.4 Message size exceeds fixed limit");
        } else {
            let outcome = shared.accept(
                self.helo.clone().unwrap_or_default(),
                self.user.clone(),
                self.mail_from.take().unwrap_or_default(),
                std::mem::take(&mut self.rcpt_to),
                std::mem::take(&mut self.data),
            );
            match outcome {
                Outcome::Queued(id) => reply(out, &format!("250 2.0.0 Ok: queued as {id}")),
                Outcome::Failed(code) => reply(out, &scripted_failure(code)),
            }
        }
        self.reset_transaction();
    }

    fn auth_command(&mut self, rest: &str, shared: &Shared, out: &mut Vec<u8>) -> Flow {
        if shared.config.credentials.is_none() {
            return self.error(out, "502 5.5.1 AUTH not supported");
        }
        if self.helo.is_none() {
            return self.error(out, "503 5.5.1 EHLO first");
        }
        if self.user.is_some() {
            return self.error(out, "503 5.5.1 Already authenticated");
        }
        let (mechanism, initial) = match rest.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim())),
            None => (rest, None),
        };
        match (mechanism.to_ascii_uppercase().as_str(), initial) {
            ("PLAIN", Some(initial)) => {
                self.finish_plain(initial, shared, out);
            }
            ("PLAIN", None) => {
                self.state = State::AuthPlain;
                reply(out, "334 ");
            }
            ("LOGIN", Some(user)) => match decode_text(user) {
                Some(user) => {
                    self.state = State::AuthLoginPassword { user };
                    reply(out, "334 UGFzc3dvcmQ6");
                }
                None => {
                    reply(out, "501 5.5.2 Cannot decode the response");
                }
            },
            ("LOGIN", None) => {
                self.state = State::AuthLoginUser;
                reply(out, "334 VXNlcm5hbWU6");
            }
            _ => return self.error(out, "504 5.5.4 Unrecognized authentication type"),
        }
        Flow::Continue
    }

    fn auth_line(&mut self, line: Line<'_>, shared: &Shared, out: &mut Vec<u8>) {
        let state = std::mem::replace(&mut self.state, State::Command);
        let text = match line {
            Line::Complete(b"*") => {
                reply(out, "501 5.7.0 Authentication cancelled");
                return;
            }
            Line::Complete(line) => std::str::from_utf8(line).unwrap_or("").trim(),
            Line::TooLong => "",
        };
        match state {
            State::AuthPlain => self.finish_plain(text, shared, out),
            State::AuthLoginUser => match decode_text(text) {
                Some(user) => {
                    self.state = State::AuthLoginPassword { user };
                    reply(out, "334 UGFzc3dvcmQ6");
                }
                None => reply(out, "501 5.5.2 Cannot decode the response"),
            },
            State::AuthLoginPassword { user } => match decode_text(text) {
                Some(password) => self.finish_auth(user, &password, shared, out),
                None => reply(out, "501 5.5.2 Cannot decode the response"),
            },
            State::Command | State::Data => {}
        }
    }

    fn finish_plain(&mut self, encoded: &str, shared: &Shared, out: &mut Vec<u8>) {
        let decoded = if encoded == "=" {
            Some(String::new())
        } else {
            decode_text(encoded)
        };
        let Some(decoded) = decoded else {
            reply(out, "501 5.5.2 Cannot decode the response");
            return;
        };
        let mut fields = decoded.split('\0');
        match (fields.next(), fields.next(), fields.next(), fields.next()) {
            (Some(_authzid), Some(user), Some(password), None) => {
                self.finish_auth(user.to_owned(), password, shared, out);
            }
            _ => reply(out, "501 5.5.2 Malformed PLAIN response"),
        }
    }

    fn finish_auth(&mut self, user: String, password: &str, shared: &Shared, out: &mut Vec<u8>) {
        if shared.check_credentials(&user, password) {
            self.user = Some(user);
            reply(out, "235 2.7.0 Authentication successful");
        } else {
            reply(out, "535 5.7.8 Authentication credentials invalid");
        }
    }
}

/// The reply for a scripted failure: a 4xx asks to try later, a 5xx refuses the message
/// without blaming the recipient.
fn scripted_failure(code: u16) -> String {
    if (400..500).contains(&code) {
        format!("{code} 4.3.0 Temporary failure, try again later")
    } else {
        format!("{code} 5.7.1 Message refused")
    }
}

fn decode_text(encoded: &str) -> Option<String> {
    let bytes = STANDARD.decode(encoded).ok()?;
    String::from_utf8(bytes).ok()
}

/// `FROM:<path> params` or `TO:<path> params` (a space after the colon is tolerated): the path
/// without its angle brackets, and the parameters.
fn path_argument<'a>(rest: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = rest[keyword.len()..].trim_start();
    let inner = after.strip_prefix('<')?;
    let (path, params) = inner.split_once('>')?;
    if path.contains(['<', ' ']) {
        return None;
    }
    Some((path, params.trim()))
}

fn reply(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn multiline_reply(out: &mut Vec<u8>, code: u16, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let separator = if i + 1 == lines.len() { ' ' } else { '-' };
        reply(out, &format!("{code}{separator}{line}"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::SmtpConfig;
    use super::*;

    fn run(shared: &Shared, session: &mut Session, lines: &[&str]) -> String {
        let mut out = Vec::new();
        for line in lines {
            session.handle(Line::Complete(line.as_bytes()), shared, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_pipelined_transaction_is_recorded_dot_unstuffed() {
        let shared = Shared::new(SmtpConfig::default());
        let mut session = Session::new();
        let out = run(
            &shared,
            &mut session,
            &[
                "EHLO client.example",
                "MAIL FROM:<a@example.com> SIZE=100",
                "RCPT TO:<b@example.com>",
                "DATA",
                "Subject: hi",
                "",
                "..leading dot",
                ".",
                "QUIT",
            ],
        );
        assert!(out.contains("250-8BITMIME\r\n"), "{out}");
        assert!(out.contains("250 2.0.0 Ok: queued as "), "{out}");
        assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
        let mail = &shared.messages()[0];
        assert_eq!(mail.mail_from, "a@example.com");
        assert_eq!(mail.rcpt_to, ["b@example.com"]);
        assert_eq!(mail.data, b"Subject: hi\r\n\r\n.leading dot\r\n");
        assert_eq!(mail.subject.as_deref(), Some("hi"));
    }

    #[test]
    fn sequence_and_syntax_errors_are_answered_not_fatal() {
        let shared = Shared::new(SmtpConfig::default());
        let mut session = Session::new();
        let out = run(
            &shared,
            &mut session,
            &[
                "MAIL FROM:<a@b>",
                "HELO x",
                "RCPT TO:<b@c>",
                "MAIL FROM:a@b",
                "DATA",
                "FOO",
            ],
        );
        let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
        assert_eq!(codes, ["503", "250", "503", "501", "503", "502"]);
        assert!(shared.messages().is_empty());
    }

    #[test]
    fn auth_plain_and_login_check_the_credentials() {
        let config = SmtpConfig {
            credentials: Some(("user".into(), "pass".into())),
            ..SmtpConfig::default()
        };
        let shared = Shared::new(config);
        let plain_ok = STANDARD.encode("\0user\0pass");
        let plain_bad = STANDARD.encode("\0user\0nope");
        let out = run(
            &shared,
            &mut Session::new(),
            &[
                "EHLO x",
                "MAIL FROM:<a@b>",
                &format!("AUTH PLAIN {plain_bad}"),
            ],
        );
        assert!(out.contains("250 AUTH PLAIN LOGIN\r\n"), "{out}");
        assert!(out.contains("530 5.7.0"), "{out}");
        assert!(out.ends_with("535 5.7.8 Authentication credentials invalid\r\n"));
        let out = run(
            &shared,
            &mut Session::new(),
            &["EHLO x", "AUTH PLAIN", &plain_ok, "MAIL FROM:<a@b>"],
        );
        assert!(out.ends_with("235 2.7.0 Authentication successful\r\n250 2.1.0 OK\r\n"));
        let out = run(
            &shared,
            &mut Session::new(),
            &[
                "EHLO x",
                "AUTH LOGIN",
                &STANDARD.encode("user"),
                &STANDARD.encode("pass"),
            ],
        );
        assert!(
            out.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 "),
            "{out}"
        );
        assert_eq!(shared.auth_failures(), 1);
    }

    #[test]
    fn oversized_input_is_refused_without_keeping_it() {
        let config = SmtpConfig {
            max_message_bytes: 64,
            ..SmtpConfig::default()
        };
        let shared = Shared::new(config);
        let mut session = Session::new();
        let mut out = Vec::new();
        for line in ["HELO x", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA"] {
            session.handle(Line::Complete(line.as_bytes()), &shared, &mut out);
        }
        for _ in 0..100 {
            session.handle(Line::Complete(&[b'x'; 40]), &shared, &mut out);
            assert!(session.data.len() <= 64);
        }
        session.handle(Line::Complete(b"."), &shared, &mut out);
        session.handle(Line::TooLong, &shared, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("552 5.3.4"), "{out}");
        assert!(out.ends_with("500 5.5.2 Line too long\r\n"), "{out}");
        assert!(shared.messages().is_empty());
    }

    #[test]
    fn too_many_errors_close_the_session() {
        let shared = Shared::new(SmtpConfig::default());
        let mut session = Session::new();
        let mut out = Vec::new();
        let mut flows = Vec::new();
        for _ in 0..=MAX_ERRORS {
            flows.push(session.handle(Line::Complete(b"BOGUS"), &shared, &mut out));
        }
        assert_eq!(flows.last(), Some(&Flow::Close));
        assert!(flows[..flows.len() - 1]
            .iter()
            .all(|f| *f == Flow::Continue));
    }
}
