//! The output format: tagged artifact blocks in the model's answer.
//!
//! ```text
//! <artifact name="requirements" type="requirements">
//! ...markdown...
//! </artifact>
//! <artifact name="backend_code" type="code" path="backend/app.py">
//! ...file content...
//! </artifact>
//! ```
//!
//! [`parse_output`] finds every block: tag and attribute names are
//! case-insensitive, attributes come in any order with single, double or no
//! quotes (`kind` is accepted for `type`), and text outside blocks is
//! ignored. Content is kept verbatim except one leading and one trailing
//! newline. An unterminated block, a block without a name or a malformed tag
//! is an error that names the block and its line, so the model can be told
//! what to fix.

const OPEN: &str = "<artifact";
const CLOSE: &str = "</artifact";

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

/// Why an answer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the offending tag.
    pub line: usize,
    pub message: String,
}

/// Parse every artifact block of `text`, in order. No blocks is not an error.
pub fn parse_output(text: &str) -> Result<Vec<ParsedBlock>, ParseError> {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower`
    // index `text` too.
    let lower = text.to_ascii_lowercase();
    let mut blocks = Vec::new();
    let mut pos = 0;
    while let Some(start) = find_open(&lower, pos) {
        let line = line_of(text, start);
        let tag = parse_tag(text, start + OPEN.len(), line)?;
        let describe = tag.describe();
        if tag.self_closing {
            pos = tag.end;
            blocks.push(tag.into_block(String::new(), line));
            continue;
        }
        let close = find_close(&lower, tag.end);
        let next_open = find_open(&lower, tag.end);
        let (close_start, close_end) = match (close, next_open) {
            (Some(found), None) => found,
            (Some(found), Some(o)) if o > found.0 => found,
            (_, Some(o)) => {
                return Err(ParseError {
                    line,
                    message: format!(
                        "artifact block {describe} is not closed: add </artifact> after its content, before the next <artifact> tag (line {})",
                        line_of(text, o)
                    ),
                });
            }
            (None, None) => {
                return Err(ParseError {
                    line,
                    message: format!(
                        "artifact block {describe} is never closed: add </artifact> after its content (was the answer cut off?)"
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
        blocks.push(tag.into_block(content.to_string(), line));
    }
    Ok(blocks)
}

/// Byte offset of the next `<artifact` tag (followed by space, `>` or `/`) at or after `from`.
fn find_open(lower: &str, from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(i) = lower.get(at..)?.find(OPEN) {
        let start = at + i;
        match lower.as_bytes().get(start + OPEN.len()) {
            Some(b) if b.is_ascii_whitespace() || *b == b'>' || *b == b'/' => return Some(start),
            None => return Some(start),
            _ => at = start + OPEN.len(),
        }
    }
    None
}

/// `(start, end)` of the next `</artifact>` (spaces allowed before `>`).
fn find_close(lower: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = lower.get(at..)?.find(CLOSE) {
        let start = at + i;
        let rest = &lower[start + CLOSE.len()..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('>') {
            let end = start + CLOSE.len() + (rest.len() - trimmed.len()) + 1;
            return Some((start, end));
        }
        at = start + CLOSE.len();
    }
    None
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

struct Tag {
    name: Option<String>,
    kind: Option<String>,
    path: Option<String>,
    /// Byte offset just after the tag's `>`.
    end: usize,
    self_closing: bool,
}

impl Tag {
    fn describe(&self) -> String {
        let name = self.name.as_deref().unwrap_or("?");
        match &self.path {
            Some(p) => format!("{name:?} (path {p:?})"),
            None => format!("{name:?}"),
        }
    }

    fn into_block(self, content: String, line: usize) -> ParsedBlock {
        ParsedBlock {
            name: self.name.unwrap_or_default(),
            kind: self.kind,
            path: self.path,
            content,
            line,
        }
    }
}

/// Parse the attributes of an opening tag starting at byte `at` (after `<artifact`).
fn parse_tag(text: &str, mut at: usize, line: usize) -> Result<Tag, ParseError> {
    let bytes = text.as_bytes();
    let err = |message: String| Err(ParseError { line, message });
    let mut tag = Tag {
        name: None,
        kind: None,
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
                return err(
                    "the <artifact ...> tag is never closed with '>' (was the answer cut off?)"
                        .into(),
                );
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
            return err(format!(
                "unexpected {found:?} in an <artifact> tag; write attributes as name=\"...\" type=\"...\" path=\"...\""
            ));
        }
        let key = text[key_start..at].to_ascii_lowercase();
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if bytes.get(at) != Some(&b'=') {
            return err(format!(
                "attribute {key:?} of an <artifact> tag has no value; write {key}=\"...\""
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
        let canonical = if key == "kind" {
            "type".to_string()
        } else {
            key
        };
        if seen.contains(&canonical) {
            return err(format!(
                "attribute {canonical:?} is given twice in one <artifact> tag"
            ));
        }
        let value = value.trim().to_string();
        match canonical.as_str() {
            "name" => tag.name = Some(value),
            "type" => tag.kind = (!value.is_empty()).then_some(value),
            "path" => tag.path = (!value.is_empty()).then_some(value),
            _ => {} // unknown attributes are ignored
        }
        seen.push(canonical);
    }
    match &tag.name {
        Some(n) if !n.is_empty() => Ok(tag),
        _ => err(format!(
            "an <artifact> tag has no name{}; write <artifact name=\"...\" type=\"...\">",
            tag.path
                .as_deref()
                .map(|p| format!(" (path {p:?})"))
                .unwrap_or_default()
        )),
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
}
