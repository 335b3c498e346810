//! Prompts stored by reference to the artifacts they quote.
//!
//! A task's prompt quotes the latest version of every upstream artifact, so
//! along a chain of N tasks the `llm_request` events would store the same
//! artifacts N/2 times over (a 40-task chain: ~25 kB of prompt per event,
//! nearly all of it earlier artifacts). Artifacts are immutable once written
//! (a change is a new version), so an event stores its messages with each
//! quoted artifact left out and a note of where it goes ([`Elided`], in the
//! event's `data.elided`); every read of the event puts them back, byte for
//! byte ([`expand`]), so readers see the prompt as it was sent.
//!
//! The same goes for each role's system prompt, the same text in every
//! request of the role: the engine has the store keep it once, by hash, and
//! the event names it ([`SYSTEM_TEXT`], [`expand_system`]).
//!
//! The agents render the task message with the quotes apart (and [`splice`]
//! them in for the provider); the stores expand events when they read them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Artifact;

/// The field of an event's data that lists what was cut from its messages.
pub const FIELD: &str = "elided";

/// The field of an llm_request event's data that names its system prompt,
/// kept once by the store (`sha256:<hex>`), in place of `system`.
pub const SYSTEM_TEXT: &str = "system_text";

/// Contents shorter than this are stored in place: a reference costs about
/// as much as a short text.
pub const MIN_ELIDED_LEN: usize = 64;

/// One artifact version of a run: what an [`Elided`] entry refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactKey {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub version: i64,
}

impl ArtifactKey {
    pub fn of(a: &Artifact) -> Self {
        ArtifactKey {
            name: a.name.clone(),
            path: a.path.clone(),
            version: a.version,
        }
    }
}

/// An artifact's content cut out of message `message` (index into the
/// event's `messages`), to be put back at byte offset `at` of the stored
/// text. The entries of one message are in increasing order of `at`, each
/// offset counted in the stored text (the text with every cut made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elided {
    pub message: usize,
    pub at: usize,
    pub artifact: ArtifactKey,
}

/// `stored` with each `(at, content)` of `quotes` put back at byte offset
/// `at` (offsets in `stored`, in increasing order). `None` if an offset is
/// out of order or not on a character boundary of `stored`.
pub fn splice<'a>(
    stored: &str,
    quotes: impl IntoIterator<Item = (usize, &'a str)>,
) -> Option<String> {
    let mut full = String::with_capacity(stored.len() * 2);
    let mut from = 0;
    for (at, content) in quotes {
        if at < from || !stored.is_char_boundary(at) {
            return None;
        }
        full.push_str(&stored[from..at]);
        full.push_str(content);
        from = at;
    }
    full.push_str(&stored[from..]);
    Some(full)
}

/// Whether an event's data has cuts or a kept text to put back.
pub fn has_elided(data: &Value) -> bool {
    data.get(FIELD).is_some() || data.get(SYSTEM_TEXT).is_some()
}

/// The reference of the kept system prompt an event's data names, if any.
pub fn system_ref(data: &Value) -> Option<&str> {
    data.get(SYSTEM_TEXT).and_then(Value::as_str)
}

/// Put back the system prompt `data` names ([`SYSTEM_TEXT`]), taking it
/// from `text_of`; a text that cannot be found is replaced by a bracketed
/// note naming it. Returns whether it was missing.
pub fn expand_system<'a>(data: &mut Value, text_of: impl Fn(&str) -> Option<&'a str>) -> bool {
    let Some(reference) = system_ref(data).map(str::to_owned) else {
        return false;
    };
    let (text, missing) = match text_of(&reference) {
        Some(text) => (text.to_owned(), false),
        None => (
            format!("[system prompt {reference} is not in the store]"),
            true,
        ),
    };
    if let Some(obj) = data.as_object_mut() {
        obj.remove(SYSTEM_TEXT);
        obj.insert("system".into(), Value::String(text));
    }
    missing
}

/// Put back the quotes left out of `data`'s messages ([`FIELD`]), taking
/// each artifact's content from `content_of`, and remove `data.elided`. An
/// artifact that cannot be found (it should not happen: artifacts are never
/// deleted before their run) is replaced by a bracketed note naming it;
/// returns how many were.
/// Data without cuts, or with a malformed list, is left as it is.
pub fn expand<'a>(data: &mut Value, content_of: impl Fn(&ArtifactKey) -> Option<&'a str>) -> usize {
    let Some(list) = data.get(FIELD) else {
        return 0;
    };
    let Ok(cuts) = serde_json::from_value::<Vec<Elided>>(list.clone()) else {
        return 0;
    };
    let Some(messages) = data.get_mut("messages").and_then(Value::as_array_mut) else {
        return 0;
    };
    let mut missing = 0;
    let mut i = 0;
    while i < cuts.len() {
        let index = cuts[i].message;
        let end = i + cuts[i..].iter().take_while(|c| c.message == index).count();
        let group = &cuts[i..end];
        i = end;
        let Some(Value::String(text)) = messages.get_mut(index).and_then(|m| m.get_mut("content"))
        else {
            continue;
        };
        let mut missing_here = 0;
        let contents: Vec<std::borrow::Cow<'a, str>> = group
            .iter()
            .map(|c| match content_of(&c.artifact) {
                Some(content) => content.into(),
                None => {
                    missing_here += 1;
                    let path = c.artifact.path.as_deref().map(|p| format!(" ({p})"));
                    format!(
                        "[artifact {} version {}{} is not in the store]",
                        c.artifact.name,
                        c.artifact.version,
                        path.unwrap_or_default()
                    )
                    .into()
                }
            })
            .collect();
        let quotes = group.iter().zip(&contents).map(|(c, s)| (c.at, s.as_ref()));
        // Offsets out of order or off a character boundary: the list was not
        // written by the engine; the message stays as stored.
        let Some(full) = splice(text, quotes) else {
            continue;
        };
        missing += missing_here;
        *text = full;
    }
    if let Some(obj) = data.as_object_mut() {
        obj.remove(FIELD);
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str, path: Option<&str>, version: i64) -> ArtifactKey {
        ArtifactKey {
            name: name.into(),
            path: path.map(Into::into),
            version,
        }
    }

    fn request(messages: &[&str]) -> Value {
        json!({
            "system": "You are the Tech Lead.",
            "messages": messages.iter().map(|m| json!({"role": "user", "content": m})).collect::<Vec<_>>(),
            "step": 0,
        })
    }

    #[test]
    fn splice_puts_each_quote_back_at_its_offset() {
        let stored = "<a>\n\n</a><b>é\n</b>";
        let full = splice(stored, [(4, "AAA"), (12, "BB"), (12, "CC")]).expect("in order");
        assert_eq!(full, "<a>\nAAA\n</a><b>BBCCé\n</b>");
        assert_eq!(splice(stored, []).as_deref(), Some(stored));
        assert_eq!(splice(stored, [(5, "x"), (4, "y")]), None, "out of order");
        assert_eq!(splice(stored, [(13, "x")]), None, "inside é");
        assert_eq!(splice(stored, [(99, "x")]), None, "beyond the end");
    }

    #[test]
    fn expand_puts_back_every_message_s_quotes_and_drops_the_list() {
        let (a, b) = ("a".repeat(70), "b".repeat(70));
        let sent = request(&[&format!("x{a}y{b}z"), "answer", &format!("{b}!")]);
        let mut data = request(&["xyz", "answer", "!"]);
        data[FIELD] = serde_json::to_value([
            Elided {
                message: 0,
                at: 1,
                artifact: key("a", None, 1),
            },
            Elided {
                message: 0,
                at: 2,
                artifact: key("b", Some("src/b.rs"), 3),
            },
            Elided {
                message: 2,
                at: 0,
                artifact: key("b", Some("src/b.rs"), 3),
            },
        ])
        .unwrap();
        let content_of = |k: &ArtifactKey| match k.name.as_str() {
            "a" => Some(a.as_str()),
            _ => Some(b.as_str()),
        };
        assert_eq!(expand(&mut data, content_of), 0);
        assert_eq!(data, sent);
        assert!(!has_elided(&data));
    }

    #[test]
    fn a_missing_artifact_is_named_in_its_place() {
        let mut data = request(&["before  after"]);
        data[FIELD] = json!([
            {"message": 0, "at": 7, "artifact": {"name": "a", "version": 2}},
            {"message": 0, "at": 7, "artifact": {"name": "code", "path": "app.py", "version": 1}},
        ]);
        assert_eq!(expand(&mut data, |_| None), 2);
        assert_eq!(
            data["messages"][0]["content"],
            "before [artifact a version 2 is not in the store][artifact code version 1 (app.py) is not in the store] after"
        );
        assert!(!has_elided(&data));
    }

    #[test]
    fn a_malformed_list_leaves_the_data_as_stored() {
        let mut data = request(&["text"]);
        data[FIELD] = json!("not a list");
        let before = data.clone();
        assert_eq!(expand(&mut data, |_| Some("x")), 0);
        assert_eq!(data, before);
        // Offsets beyond the text or off a character boundary: the message
        // stays as stored.
        let mut data = request(&["é"]);
        data[FIELD] = json!([{"message": 0, "at": 1, "artifact": {"name": "a", "version": 1}}]);
        expand(&mut data, |_| Some("x"));
        assert_eq!(data["messages"][0]["content"], "é");
        // A message that is not there.
        let mut data = request(&["only one"]);
        data[FIELD] = json!([{"message": 3, "at": 0, "artifact": {"name": "a", "version": 1}}]);
        expand(&mut data, |_| Some("x"));
        assert_eq!(data, request(&["only one"]));
    }

    #[test]
    fn a_named_system_prompt_is_put_back_or_named_as_missing() {
        let mut data = json!({"system": null, "system_text": "sha256:ab", "messages": []});
        assert!(has_elided(&data));
        assert_eq!(system_ref(&data), Some("sha256:ab"));
        assert!(!expand_system(&mut data, |r| (r == "sha256:ab").then_some("You are X.")));
        assert_eq!(data, json!({"system": "You are X.", "messages": []}));
        assert!(!has_elided(&data));

        let mut data = json!({"system": null, "system_text": "sha256:cd"});
        assert!(expand_system(&mut data, |_| None));
        assert_eq!(
            data["system"],
            "[system prompt sha256:cd is not in the store]"
        );
        let mut plain = json!({"system": "inline"});
        assert!(!expand_system(&mut plain, |_| Some("other")));
        assert_eq!(plain, json!({"system": "inline"}));
    }
}
