//! A received message, with the little of RFC 5322 and MIME a test needs to read it: unfolded
//! headers, RFC 2047 encoded words, and the text parts of a one-level multipart body decoded
//! from 7bit, 8bit, quoted-printable or base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// One message the stand-in accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The id given in the 250 reply (`queued as …`).
    pub queue_id: String,
    /// The EHLO/HELO name.
    pub helo: String,
    /// The user who authenticated, if any.
    pub auth_user: Option<String>,
    /// `MAIL FROM` path (without angle brackets).
    pub mail_from: String,
    /// `RCPT TO` paths accepted.
    pub rcpt_to: Vec<String>,
    /// The message after dot-unstuffing, lines ending in CRLF.
    pub data: Vec<u8>,
    /// Header fields in order, unfolded, values as sent (encoded words left encoded).
    pub headers: Vec<(String, String)>,
    /// The decoded `Subject`.
    pub subject: Option<String>,
}

impl ReceivedMail {
    pub(super) fn new(
        queue_id: String,
        helo: String,
        auth_user: Option<String>,
        mail_from: String,
        rcpt_to: Vec<String>,
        data: Vec<u8>,
    ) -> Self {
        let (headers, _) = split_message(&data);
        let subject = header(&headers, "Subject").map(decode_words);
        Self {
            queue_id,
            helo,
            auth_user,
            mail_from,
            rcpt_to,
            data,
            headers,
            subject,
        }
    }

    /// The first header field named `name` (without case), as sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The decoded text of the first part whose media type is `media_type` (for example
    /// `text/plain`), in the body itself or one level inside a multipart body.
    pub fn text_part(&self, media_type: &str) -> Option<String> {
        let (headers, body) = split_message(&self.data);
        let content_type = header(&headers, "Content-Type").unwrap_or("text/plain");
        if media_type_of(content_type).eq_ignore_ascii_case(media_type) {
            return Some(decode_body(&headers, body));
        }
        let boundary = parameter(content_type, "boundary")?;
        parts(body, &boundary)
            .into_iter()
            .map(split_message)
            .find(|(headers, _)| {
                let part_type = header(headers, "Content-Type").unwrap_or("text/plain");
                media_type_of(part_type).eq_ignore_ascii_case(media_type)
            })
            .map(|(headers, body)| decode_body(&headers, body))
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Header fields (unfolded) and the body after the empty line.
fn split_message(data: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let (head, body) = match find(data, b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => match data.strip_prefix(b"\r\n") {
            Some(body) => (&data[..0], body),
            None => (data, &data[data.len()..]),
        },
    };
    let head = String::from_utf8_lossy(head);
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    (headers, body)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn media_type_of(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// A `name=value` or `name="value"` parameter of a header value.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// The parts between `--boundary` lines, up to `--boundary--`.
fn parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset: usize = 0;
    for line in body.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        if text.starts_with(delimiter.as_bytes()) {
            if let Some(s) = start {
                // The CRLF before a delimiter belongs to the delimiter.
                let end = offset.saturating_sub(2).max(s);
                parts.push(&body[s..end]);
            }
            if text[delimiter.len()..].starts_with(b"--") {
                return parts;
            }
            start = Some(offset + line.len());
        }
        offset += line.len();
    }
    parts
}

fn decode_body(headers: &[(String, String)], body: &[u8]) -> String {
    let encoding = header(headers, "Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "base64" => {
            let compact: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            STANDARD.decode(compact).unwrap_or_default()
        }
        "quoted-printable" => decode_quoted_printable(body, false),
        _ => body.to_vec(),
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Quoted-printable (RFC 2045), or the Q encoding of RFC 2047 where `_` is a space.
fn decode_quoted_printable(input: &[u8], q_encoding: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'=' if input[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' if input[i + 1..].starts_with(b"\n") => i += 2,
            b'=' => match input.get(i + 1..i + 3).and_then(hex_byte) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b'=');
                    i += 1;
                }
            },
            b'_' if q_encoding => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(pair).ok()?;
    u8::from_str_radix(text, 16).ok()
}

/// Decodes RFC 2047 encoded words (`=?utf-8?B?…?=`, `=?utf-8?Q?…?=`); whitespace between two
/// encoded words is dropped, as the RFC says.
fn decode_words(value: &str) -> String {
    let mut out = String::new();
    let mut pending_space = String::new();
    let mut last_was_word = false;
    for token in value.split_inclusive([' ', '\t']) {
        let word = token.trim_end_matches([' ', '\t']);
        let space = &token[word.len()..];
        match decode_word(word) {
            Some(decoded) => {
                if !last_was_word {
                    out.push_str(&pending_space);
                }
                out.push_str(&decoded);
                last_was_word = true;
            }
            None => {
                out.push_str(&pending_space);
                out.push_str(word);
                last_was_word = false;
            }
        }
        pending_space = space.to_owned();
    }
    out
}

fn decode_word(word: &str) -> Option<String> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut fields = inner.splitn(3, '?');
    let charset = fields.next()?;
    let encoding = fields.next()?;
    let text = fields.next()?;
    if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("us-ascii") {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => STANDARD.decode(text).ok()?,
        "Q" | "q" => decode_quoted_printable(text.as_bytes(), true),
        _ => return None,
    };
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(data: &str) -> ReceivedMail {
        ReceivedMail::new(
            "1".into(),
            "h".into(),
            None,
            "a@b".into(),
            vec!["c@d".into()],
            data.as_bytes().to_vec(),
        )
    }

    #[test]
    fn headers_unfold_and_subjects_decode() {
        let m = mail(
            "Subject: =?utf-8?b?5LqI57SE?= =?utf-8?q?_confirmed?= now\r\n\
             X-Long: one\r\n two\r\n\r\nbody\r\n",
        );
        assert_eq!(m.subject.as_deref(), Some("予約 confirmed now"));
        assert_eq!(m.header("x-long"), Some("one two"));
        assert_eq!(m.text_part("text/plain").as_deref(), Some("body\r\n"));
    }

    #[test]
    fn text_parts_of_a_multipart_body_decode() {
        let m = mail(
            "Content-Type: multipart/alternative; boundary=\"XyZ\"\r\n\r\n\
             --XyZ\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\n\
             caf=C3=A9 and a soft=\r\n break\r\n\
             --XyZ\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             PGI+aGk8L2I+\r\n--XyZ--\r\n",
        );
        assert_eq!(
            m.text_part("text/plain").as_deref(),
            Some("café and a soft break")
        );
        assert_eq!(m.text_part("text/html").as_deref(), Some("<b>hi</b>"));
        assert_eq!(m.text_part("image/png"), None);
    }

    #[test]
    fn garbage_does_not_panic() {
        for data in [
            "",
            "\r\n",
            "=?",
            "Subject: =?utf-8?b?!!?=\r\n\r\n=",
            "a\r\n\r\n=Z",
        ] {
            let m = mail(data);
            let _ = m.text_part("text/plain");
        }
        assert_eq!(decode_quoted_printable(b"=4", false), b"=4");
    }
}
