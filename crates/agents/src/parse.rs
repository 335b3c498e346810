//! The output format: tagged artifact and message blocks in the model's answer.
//!
//! ```text
//! <artifact name="requirements" type="requirements">
//! ...markdown...
//! </artifact>
//! <artifact name="backend_code" type="code" path="backend/app.py">
//! ...file content...
//! </artifact>
//! <message channel="team">
//! The API answers invalid input with 422, not 400.
//! </message>
//! ```
//!
//! [`parse_answer`] finds every block: tag and attribute names are
//! case-insensitive, attributes come in any order with single, double or no
//! quotes (`kind` is accepted for `type`, `to` for `channel`), and text
//! outside blocks is ignored. Content is kept verbatim except one leading and
//! one trailing newline; a `<message` inside an artifact's content is content.
//! An unterminated block, a block without a name (or channel) or a malformed
//! tag is an error that names the block and its line, so the model can be
//! told what to fix. [`parse_output`] is the artifacts only.

const OPEN: &str = "<artifact";
const CLOSE: &str = "</artifact";
const MESSAGE_OPEN: &str = "<message";
const MESSAGE_CLOSE: &str = "</message";

/// One `<artifact>` block of a model's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedBlock {
    pub name: String,
    /// The `type` (or `kind`) attribute, if given.
    pub kind: Option<String>,
    /// The `path` attribute, if given and not empty.
    pub path: Option<String>,
    pub content: String,
    /// 1-based line of the opening tag.
    pub line: usize,
}

/// One `<message channel="...">` block of a model's answer: a message to post
/// on a channel of the run. The channel name is checked by the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    pub channel: String,
    pub text: String,
    /// 1-based line of the opening tag.
    pub line: usize,
}

/// Every block of an answer, each kind in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedAnswer {
    pub artifacts: Vec<ParsedBlock>,
    pub messages: Vec<ParsedMessage>,
}

/// Why an answer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the offending tag.
    pub line: usize,
    pub message: String,
}

/// Parse every artifact block of `text`, in order (message blocks are
/// checked, then left out). No blocks is not an error.
pub fn parse_output(text: &str) -> Result<Vec<ParsedBlock>, ParseError> {
    parse_answer(text).map(|a| a.artifacts)
}

/// Parse every artifact and message block of `text`. No blocks is not an error.
pub fn parse_answer(text: &str) -> Result<ParsedAnswer, ParseError> {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower`
    // index `text` too.
    let lower = text.to_ascii_lowercase();
    let mut answer = ParsedAnswer::default();
    let mut pos = 0;
    loop {
        let artifact = find_open(&lower, OPEN, pos);
        let message = find_open(&lower, MESSAGE_OPEN, pos);
        let (start, kind) = match (artifact, message) {
            (Some(a), Some(m)) if m < a => (m, Kind::Message),
            (Some(a), _) => (a, Kind::Artifact),
            (None, Some(m)) => (m, Kind::Message),
            (None, None) => break,
        };
        let line = line_of(text, start);
        let tag = parse_tag(text, start + kind.open().len(), line, kind)?;
        let describe = tag.describe();
        if tag.self_closing {
            pos = tag.end;
            tag.push_into(&mut answer, String::new(), line);
            continue;
        }
        let close = find_close(&lower, kind.close(), tag.end);
        // A new block before the close means this one was left open. Inside
        // an artifact only another `<artifact` counts (its content may well
        // mention `<message`); inside a message, either.
        let next_open = match kind {
            Kind::Artifact => find_open(&lower, OPEN, tag.end),
            Kind::Message => [
                find_open(&lower, OPEN, tag.end),
                find_open(&lower, MESSAGE_OPEN, tag.end),
            ]
            .into_iter()
            .flatten()
            .min(),
        };
        let (what, close_tag) = (kind.what(), kind.close_tag());
        let (close_start, close_end) = match (close, next_open) {
            (Some(found), None) => found,
            (Some(found), Some(o)) if o > found.0 => found,
            (_, Some(o)) => {
                let next = if lower[o..].starts_with(OPEN) {
                    "<artifact>"
                } else {
                    "<message>"
                };
                return Err(ParseError {
                    line,
                    message: format!(
                        "{what} block {describe} is not closed: add {close_tag} after its content, before the next {next} tag (line {})",
                        line_of(text, o)
                    ),
                });
            }
            (None, None) => {
                return Err(ParseError {
                    line,
                    message: format!(
                        "{what} block {describe} is never closed: add {close_tag} after its content (was the answer cut off?)"
                    ),
                });
            }
        };
        let mut content = &text[tag.end..close_start];
        content = content
            .strip_prefix("\r\n")
            .or_else(|| content.strip_prefix('\n'))
            .unwrap_or(content);
        content = content
            .strip_suffix("\r\n")
            .or_else(|| content.strip_suffix('\n'))
            .unwrap_or(content);
        pos = close_end;
        tag.push_into(&mut answer, content.to_string(), line);
    }
    Ok(answer)
}

/// The two kinds of block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Artifact,
    Message,
}

impl Kind {
    fn open(self) -> &'static str {
        match self {
            Kind::Artifact => OPEN,
            Kind::Message => MESSAGE_OPEN,
        }
    }

    fn close(self) -> &'static str {
        match self {
            Kind::Artifact => CLOSE,
            Kind::Message => MESSAGE_CLOSE,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Artifact => "artifact",
            Kind::Message => "message",
        }
    }

    fn close_tag(self) -> &'static str {
        match self {
            Kind::Artifact => "</artifact>",
            Kind::Message => "</message>",
        }
    }
}

/// Byte offset of the next `open` tag (followed by space, `>` or `/`) at or after `from`.
fn find_open(lower: &str, open: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = lower.get(at..)?.find(open) {
        let start = at + i;
        match lower.as_bytes().get(start + open.len()) {
            Some(b) if b.is_ascii_whitespace() || *b == b'>' || *b == b'/' => return Some(start),
            None => return Some(start),
            _ => at = start + open.len(),
        }
    }
    None
}

/// `(start, end)` of the next `close` tag (spaces allowed before `>`).
fn find_close(lower: &str, close: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = lower.get(at..)?.find(close) {
        let start = at + i;
        let rest = &lower[start + close.len()..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('>') {
            let end = start + close.len() + (rest.len() - trimmed.len()) + 1;
            return Some((start, end));
        }
        at = start + close.len();
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

struct Tag {
    kind: Kind,
    /// `name` of an artifact, `channel` of a message.
    name: Option<String>,
    /// `type` of an artifact.
    type_: Option<String>,
    path: Option<String>,
    /// Byte offset just after the tag's `>`.
    end: usize,
    self_closing: bool,
}

impl Tag {
    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("?");
        match (&self.path, self.kind) {
            (Some(p), Kind::Artifact) => format!("{name:?} (path {p:?})"),
            (_, Kind::Artifact) => format!("{name:?}"),
            (_, Kind::Message) => format!("to channel {name:?}"),
        }
    }

    fn push_into(self, answer: &mut ParsedAnswer, content: String, line: usize) {
        match self.kind {
            Kind::Artifact => answer.artifacts.push(ParsedBlock {
                name: self.name.unwrap_or_default(),
                kind: self.type_,
                path: self.path,
                content,
                line,
            }),
            Kind::Message => answer.messages.push(ParsedMessage {
                channel: self.name.unwrap_or_default(),
                text: content,
                line,
            }),
        }
    }
}

/// Parse the attributes of an opening tag starting at byte `at` (after
/// `<artifact` or `<message`).
fn parse_tag(text: &str, mut at: usize, line: usize, kind: Kind) -> Result<Tag, ParseError> {
    let bytes = text.as_bytes();
    let err = |message: String| Err(ParseError { line, message });
    let what = kind.what();
    let mut tag = Tag {
        kind,
        name: None,
        type_: None,
        path: None,
        end: 0,
        self_closing: false,
    };
    let mut seen: Vec<String> = Vec::new();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        match bytes.get(at) {
            None => {
                return err(format!(
                    "the <{what} ...> tag is never closed with '>' (was the answer cut off?)"
                ));
            }
            Some(b'>') => {
                tag.end = at + 1;
                break;
            }
            Some(b'/') if bytes.get(at + 1) == Some(&b'>') => {
                tag.end = at + 2;
                tag.self_closing = true;
                break;
            }
            _ => {}
        }
        let key_start = at;
        while at < bytes.len()
            && (bytes[at].is_ascii_alphanumeric() || matches!(bytes[at], b'_' | b'-' | b':'))
        {
            at += 1;
        }
        if at == key_start {
            let found: String = text[at..].chars().take(1).collect();
            let hint = match kind {
                Kind::Artifact => "write attributes as name=\"...\" type=\"...\" path=\"...\"",
                Kind::Message => "write <message channel=\"team\">",
            };
            return err(format!("unexpected {found:?} in an <{what}> tag; {hint}"));
        }
        let key = text[key_start..at].to_ascii_lowercase();
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            return err(format!(
                "attribute {key:?} of an <{what}> tag has no value; write {key}=\"...\""
            ));
        }
        at += 1;
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let value = match bytes.get(at) {
            Some(&q) if q == b'"' || q == b'\'' => {
                let Some(len) = text[at + 1..].find(q as char) else {
                    return err(format!(
                        "the value of attribute {key:?} is missing its closing {} quote",
                        q as char
                    ));
                };
                let v = &text[at + 1..at + 1 + len];
                at += len + 2;
                v
            }
            _ => {
                let start = at;
                while at < bytes.len()
                    && !bytes[at].is_ascii_whitespace()
                    && bytes[at] != b'>'
                    && !(bytes[at] == b'/' && bytes.get(at + 1) == Some(&b'>'))
                {
                    at += 1;
                }
                &text[start..at]
            }
        };
        if value.contains('\n') {
            return err(format!(
                "the value of attribute {key:?} spans lines; check its quotes"
            ));
        }
        let canonical = match (kind, key.as_str()) {
            (Kind::Artifact, "kind") => "type".to_string(),
            (Kind::Message, "to") => "channel".to_string(),
            _ => key,
        };
        if seen.contains(&canonical) {
            return err(format!(
                "attribute {canonical:?} is given twice in one <{what}> tag"
            ));
        }
        let value = value.trim().to_string();
        match (kind, canonical.as_str()) {
            (Kind::Artifact, "name") | (Kind::Message, "channel") => tag.name = Some(value),
            (Kind::Artifact, "type") => tag.type_ = (!value.is_empty()).then_some(value),
            (Kind::Artifact, "path") => tag.path = (!value.is_empty()).then_some(value),
            _ => {} // unknown attributes are ignored
        }
        seen.push(canonical);
    }
    match (&tag.name, kind) {
        (Some(n), _) if !n.is_empty() => Ok(tag),
        (_, Kind::Artifact) => err(format!(
            "an <artifact> tag has no name{}; write <artifact name=\"...\" type=\"...\">",
            tag.path
                .as_deref()
                .map(|p| format!(" (path {p:?})"))
                .unwrap_or_default()
        )),
        (_, Kind::Message) => err(
            "a <message> tag has no channel; write <message channel=\"team\">...</message>".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> ParsedBlock {
        let mut b = parse_output(text).unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        b.remove(0)
    }

    #[test]
    fn parses_blocks_with_prose_around_them() {
        let text = "Here you go.\n\n<artifact name=\"requirements\" type=\"requirements\">\n# Reqs\n\n- one\n</artifact>\n\nand\n<artifact name=\"backend_code\" type=\"code\" path=\"backend/app.py\">\nprint('hi')\n\n</artifact>\nDone.";
        let b = parse_output(text).unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name, "requirements");
        assert_eq!(b[0].kind.as_deref(), Some("requirements"));
        assert_eq!(b[0].path, None);
        assert_eq!(b[0].content, "# Reqs\n\n- one");
        assert_eq!(b[0].line, 3);
        assert_eq!(b[1].path.as_deref(), Some("backend/app.py"));
        assert_eq!(
            b[1].content, "print('hi')\n",
            "only one trailing newline is removed"
        );
        assert_eq!(b[1].line, 10);
    }

    #[test]
    fn attributes_in_any_order_and_quoting() {
        let b = one(
            "<artifact path='db/schema.sql' kind=schema NAME = \"schema\" extra=\"x\">\r\nSQL\r\n</ARTIFACT >",
        );
        assert_eq!(b.name, "schema");
        assert_eq!(b.kind.as_deref(), Some("schema"));
        assert_eq!(b.path.as_deref(), Some("db/schema.sql"));
        assert_eq!(b.content, "SQL");
        let b =
            one("<Artifact type=\"review\" name='code_review'>{\"verdict\": \"PASS\"}</artifact>");
        assert_eq!(b.content, "{\"verdict\": \"PASS\"}");
        let b = one("<artifact name=\"x\" path=\"\" type=\"\"/>");
        assert_eq!((b.kind, b.path, b.content), (None, None, String::new()));
    }

    #[test]
    fn content_is_verbatim() {
        let b = one(
            "<artifact name=\"c\" type=\"code\" path=\"a.html\">\n\n  <b>x</b> <artifacts> & </artifactual>\n\t\n</artifact>",
        );
        assert_eq!(b.content, "\n  <b>x</b> <artifacts> & </artifactual>\n\t");
    }

    #[test]
    fn no_blocks_is_not_an_error() {
        assert!(parse_output("just prose").unwrap().is_empty());
        assert!(parse_output("").unwrap().is_empty());
    }

    #[test]
    fn unterminated_blocks_name_the_block() {
        let e =
            parse_output("x\n<artifact name=\"backend_code\" path=\"backend/app.py\">\ncode...")
                .unwrap_err();
        assert_eq!(e.line, 2);
        let m = e.to_string();
        assert!(
            m.contains("\"backend_code\"")
                && m.contains("backend/app.py")
                && m.contains("never closed"),
            "{m}"
        );

        let e = parse_output("<artifact name=\"a\">\none\n<artifact name=\"b\">\ntwo\n</artifact>")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"a\"") && e.contains("not closed") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn malformed_tags_are_errors() {
        let cases = [
            ("<artifact type=\"code\">x</artifact>", "no name"),
            ("<artifact name=\"\">x</artifact>", "no name"),
            ("<artifact name=\"a\" name=\"b\">x</artifact>", "twice"),
            (
                "<artifact type=\"a\" kind=\"b\" name=\"c\">x</artifact>",
                "twice",
            ),
            ("<artifact name=\"a>x</artifact>", "closing \" quote"),
            ("<artifact name=\"a\" path>x</artifact>", "no value"),
            ("<artifact name=\"a\" \"b\">x</artifact>", "unexpected"),
            ("<artifact name=\"a\"", "never closed with '>'"),
            ("<artifact name='a\nb'>x</artifact>", "spans lines"),
        ];
        for (text, want) in cases {
            let e = parse_output(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn unicode_content_and_values_are_fine() {
        let b = one(
            "<artifact name=\"doc\" type=\"design\" path=\"docs/é.md\">\nÜber → ok\n</artifact>",
        );
        assert_eq!(b.path.as_deref(), Some("docs/é.md"));
        assert_eq!(b.content, "Über → ok");
    }

    #[test]
    fn message_blocks_are_parsed_alongside_artifacts() {
        let text = "Done.\n<message channel=\"team\">\nThe API answers 422 on invalid input.\n</message>\n<artifact name=\"backend_code\" type=\"code\" path=\"backend/app.py\">\n# <message channel=\"x\"> in code is content\nprint(1)\n</artifact>\n<MESSAGE To='frontend_engineer'>see /todos</Message >\n<message channel=\"team\"/>";
        let a = parse_answer(text).unwrap();
        assert_eq!(a.artifacts.len(), 1);
        assert!(a.artifacts[0].content.contains("<message channel=\"x\">"));
        assert_eq!(
            a.messages,
            vec![
                ParsedMessage {
                    channel: "team".into(),
                    text: "The API answers 422 on invalid input.".into(),
                    line: 2,
                },
                ParsedMessage {
                    channel: "frontend_engineer".into(),
                    text: "see /todos".into(),
                    line: 9,
                },
                ParsedMessage {
                    channel: "team".into(),
                    text: String::new(),
                    line: 10,
                },
            ]
        );
        assert_eq!(parse_output(text).unwrap(), a.artifacts);
        // `<messages>` or `<message-id>` are not message tags.
        assert!(
            parse_answer("<messages>x</messages> <message-id>")
                .unwrap()
                .messages
                .is_empty()
        );
    }

    #[test]
    fn malformed_message_blocks_are_errors() {
        let cases = [
            ("<message>hi</message>", "no channel"),
            ("<message channel=\"\">hi</message>", "no channel"),
            ("<message channel=\"a\" to=\"b\">hi</message>", "twice"),
            (
                "<message channel=\"team\">\nhi",
                "never closed: add </message>",
            ),
            (
                "<message channel=\"team\">hi\n<artifact name=\"a\">x</artifact>",
                "before the next <artifact> tag (line 2)",
            ),
            (
                "<message channel=\"team\">hi\n<message channel=\"b\">x</message>",
                "before the next <message> tag (line 2)",
            ),
            ("<message channel=\"team\" \"x\">hi</message>", "unexpected"),
            (
                "<message channel=\"team\"",
                "<message ...> tag is never closed",
            ),
        ];
        for (text, want) in cases {
            let e = parse_answer(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // An artifact left open before a message is still the artifact's error.
        let e = parse_answer("<artifact name=\"a\">\nx\n<message channel=\"team\">hi</message>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("artifact block \"a\" is never closed"), "{e}");
    }
}
