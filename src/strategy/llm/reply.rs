//! What a model's reply proposes, and the proposed train.py.
//!
//! Models are asked for `{"description": "...", "changes": [{"old": "...", "new": "..."}]}` but
//! do not always obey: the object may come bare, in a fenced block, or with prose around it, and
//! some models send the whole new train.py in a ```python block instead. All of these are
//! accepted; anything else is refused with a reason the model is told.

use serde::Deserialize;

use super::{RefusalKind, Refused};

/// Longest description kept (one line in status and results.jsonl).
const MAX_DESCRIPTION: usize = 200;
/// Candidate `{` positions tried when looking for a JSON object inside prose.
const MAX_OBJECT_STARTS: usize = 256;

/// One find/replace edit.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Change {
    /// Exact text of the current train.py, which must occur exactly once.
    pub old: String,
    /// Its replacement.
    pub new: String,
}

/// A parsed reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Find/replace edits of the base train.py.
    Changes {
        description: String,
        changes: Vec<Change>,
    },
    /// A whole new train.py.
    WholeFile {
        description: String,
        train_py: String,
    },
}

#[derive(Deserialize)]
struct EditObject {
    #[serde(default)]
    description: Option<String>,
    changes: Vec<Change>,
}

/// Reads a reply in any accepted format.
pub fn parse(content: &str) -> Result<Reply, Refused> {
    let text = strip_thinking(content);
    let blocks = fenced_blocks(&text);
    let json_blocks = blocks
        .iter()
        .filter(|b| matches!(b.lang.as_str(), "" | "json" | "jsonc"))
        .map(|b| b.body.as_str());
    let edit = std::iter::once(text.trim())
        .chain(json_blocks)
        .find_map(|t| serde_json::from_str::<EditObject>(t.trim()).ok())
        .or_else(|| object_in_prose(&text));
    if let Some(edit) = edit {
        return edits(edit);
    }
    let python = blocks
        .iter()
        .filter(|b| matches!(b.lang.as_str(), "python" | "py" | "python3"))
        .max_by_key(|b| b.body.len());
    if let Some(block) = python {
        return Ok(Reply::WholeFile {
            description: one_line(&prose_outside_blocks(&text))
                .unwrap_or_else(|| "whole-file edit".into()),
            train_py: block.body.clone(),
        });
    }
    Err(Refused::new(
        RefusalKind::Unparseable,
        "found neither a JSON object with \"description\" and \"changes\" nor a ```python block with the whole train.py",
    ))
}

fn edits(edit: EditObject) -> Result<Reply, Refused> {
    if edit.changes.is_empty() {
        return Err(Refused::new(
            RefusalKind::Unparseable,
            "\"changes\" is empty",
        ));
    }
    if let Some(i) = edit.changes.iter().position(|c| c.old.is_empty()) {
        return Err(Refused::new(
            RefusalKind::NoMatch,
            format!("changes[{i}].old is empty; copy the exact text to replace"),
        ));
    }
    let description = edit
        .description
        .as_deref()
        .and_then(one_line)
        .unwrap_or_else(|| format!("{} change(s)", edit.changes.len()));
    Ok(Reply::Changes {
        description,
        changes: edit.changes,
    })
}

/// Applies find/replace edits in order; each `old` must occur exactly once in the text it is
/// applied to, so an edit never lands somewhere the model did not mean.
pub fn apply(base: &str, changes: &[Change]) -> Result<String, Refused> {
    let mut text = base.to_string();
    for (i, change) in changes.iter().enumerate() {
        let mut found = text.match_indices(&change.old);
        let Some((at, _)) = found.next() else {
            return Err(Refused::new(
                RefusalKind::NoMatch,
                format!(
                    "changes[{i}].old does not occur in train.py: {}",
                    quote(&change.old)
                ),
            ));
        };
        if found.next().is_some() {
            let n = text.matches(&change.old).count();
            return Err(Refused::new(
                RefusalKind::AmbiguousMatch,
                format!(
                    "changes[{i}].old occurs {n} times in train.py; include more surrounding text so it occurs once: {}",
                    quote(&change.old)
                ),
            ));
        }
        text.replace_range(at..at + change.old.len(), &change.new);
    }
    Ok(text)
}

fn quote(s: &str) -> String {
    let mut q: String = s.chars().take(120).collect();
    if s.chars().count() > 120 {
        q.push('…');
    }
    format!("{q:?}")
}

/// Reasoning models wrap their thoughts in `<think>…</think>`; a JSON sketch in there is not
/// the answer.
fn strip_thinking(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(start) = rest.find("<think>") {
        out.push_str(&rest[..start]);
        match rest[start..].find("</think>") {
            Some(end) => rest = &rest[start + end + "</think>".len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

struct Block {
    lang: String,
    body: String,
    /// Byte range of the whole block, fences included.
    span: std::ops::Range<usize>,
}

/// Markdown fenced blocks (```lang … ```), fences at the start of a line.
fn fenced_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(info) = trimmed.strip_prefix("```") {
            match open.take() {
                None => {
                    let lang = info.trim().to_ascii_lowercase();
                    open = Some((offset, lang, offset + line.len()));
                }
                Some((start, lang, body_start)) if info.trim().is_empty() => blocks.push(Block {
                    lang,
                    body: text[body_start..offset].to_string(),
                    span: start..offset + line.len(),
                }),
                // "```python" while a block is open: the model opened a new one; restart there.
                Some(_) => {
                    open = Some((
                        offset,
                        info.trim().to_ascii_lowercase(),
                        offset + line.len(),
                    ))
                }
            }
        }
        offset += line.len();
    }
    blocks
}

fn prose_outside_blocks(text: &str) -> String {
    let mut prose = String::new();
    let mut at = 0;
    for block in fenced_blocks(text) {
        prose.push_str(&text[at..block.span.start]);
        at = block.span.end;
    }
    prose.push_str(&text[at..]);
    prose
}

/// The first JSON object with `changes` that starts at some `{` of the text (serde_json reads
/// one value and stops, so prose after it does not matter).
fn object_in_prose(text: &str) -> Option<EditObject> {
    text.match_indices('{')
        .take(MAX_OBJECT_STARTS)
        .find_map(|(at, _)| {
            serde_json::Deserializer::from_str(&text[at..])
                .into_iter::<EditObject>()
                .next()?
                .ok()
        })
}

/// The first non-empty line, trimmed of Markdown decoration, at most [`MAX_DESCRIPTION`] chars.
fn one_line(text: &str) -> Option<String> {
    let line = text
        .lines()
        .map(|l| {
            l.trim()
                .trim_start_matches(['#', '*', '-', '>', ' '])
                .trim()
        })
        .find(|l| !l.is_empty())?;
    let mut out: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect();
    if line.chars().count() > MAX_DESCRIPTION {
        out.push('…');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "DEPTH = 8  # layers\nLR = 0.04\nprint('val_bpb: 1.0')\n";

    fn changes(reply: Reply) -> Vec<Change> {
        match reply {
            Reply::Changes { changes, .. } => changes,
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn bare_json_is_read() {
        let reply = parse(
            r#"{"description": "deeper", "changes": [{"old": "DEPTH = 8", "new": "DEPTH = 10"}]}"#,
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply::Changes {
                description: "deeper".into(),
                changes: vec![Change {
                    old: "DEPTH = 8".into(),
                    new: "DEPTH = 10".into()
                }]
            }
        );
    }

    #[test]
    fn fenced_json_with_prose_around_is_read() {
        let text = "Sure! Here is my proposal.\n\n```json\n{\"description\": \"lower lr\",\n \"changes\": [{\"old\": \"LR = 0.04\", \"new\": \"LR = 0.02\"}]}\n```\nThis should help {maybe}.";
        let c = changes(parse(text).unwrap());
        assert_eq!(apply(BASE, &c).unwrap(), BASE.replace("0.04", "0.02"));
    }

    #[test]
    fn an_object_inside_prose_without_fences_is_read() {
        let text = "I think {this} is best: {\"description\": \"x\", \"changes\": [{\"old\": \"LR\", \"new\": \"LR2\"}]} and that's it.";
        assert_eq!(changes(parse(text).unwrap())[0].new, "LR2");
    }

    #[test]
    fn thinking_is_ignored() {
        let text = "<think>maybe {\"description\": \"no\", \"changes\": [{\"old\": \"a\", \"new\": \"b\"}]}</think>\n{\"description\": \"yes\", \"changes\": [{\"old\": \"LR\", \"new\": \"L\"}]}";
        match parse(text).unwrap() {
            Reply::Changes { description, .. } => assert_eq!(description, "yes"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_whole_file_in_a_python_block_is_read() {
        let text = "## Raise depth to 10\n\n```python\nDEPTH = 10\nprint('val_bpb: 1.0')\n```\n";
        assert_eq!(
            parse(text).unwrap(),
            Reply::WholeFile {
                description: "Raise depth to 10".into(),
                train_py: "DEPTH = 10\nprint('val_bpb: 1.0')\n".into()
            }
        );
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        for text in [
            "I cannot help with that.",
            "{\"description\": \"x\"}",
            "```\nnot json\n```",
        ] {
            let r = parse(text).unwrap_err();
            assert_eq!(r.kind, RefusalKind::Unparseable, "{text}");
        }
        let r = parse(r#"{"description": "x", "changes": []}"#).unwrap_err();
        assert_eq!(r.kind, RefusalKind::Unparseable);
    }

    #[test]
    fn an_old_must_match_exactly_once() {
        let none = [Change {
            old: "DEPTH = 9".into(),
            new: "x".into(),
        }];
        assert_eq!(apply(BASE, &none).unwrap_err().kind, RefusalKind::NoMatch);
        let twice = [Change {
            old: "= ".into(),
            new: "=".into(),
        }];
        let r = apply(BASE, &twice).unwrap_err();
        assert_eq!(r.kind, RefusalKind::AmbiguousMatch);
        assert!(r.message.contains("occurs 2 times"), "{}", r.message);
        let empty = parse(r#"{"description": "x", "changes": [{"old": "", "new": "y"}]}"#);
        assert_eq!(empty.unwrap_err().kind, RefusalKind::NoMatch);
        // Edits apply in order: the second sees the first's result.
        let chain = [
            Change {
                old: "LR = 0.04".into(),
                new: "LR = 0.05".into(),
            },
            Change {
                old: "LR = 0.05".into(),
                new: "LR = 0.06".into(),
            },
        ];
        assert!(apply(BASE, &chain).unwrap().contains("LR = 0.06\n"));
    }

    #[test]
    fn descriptions_are_one_bounded_line() {
        let long = "x".repeat(500);
        let text = format!(
            "{{\"description\": \"{long}\\nsecond line\", \"changes\": [{{\"old\": \"a\", \"new\": \"b\"}}]}}"
        );
        match parse(&text).unwrap() {
            Reply::Changes { description, .. } => {
                assert_eq!(description.chars().count(), MAX_DESCRIPTION + 1);
                assert!(!description.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }
}
