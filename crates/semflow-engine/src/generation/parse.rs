//! Reading the generator's replies: JSON out of plain text (code fences, `<think>` blocks,
//! prose around the object) and the checks a query must pass. Each way a reply can be bad is a
//! [`Malformed`] kind, counted in the run report.

use serde_json::Value;

/// Why a reply was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    /// No JSON object could be found in the reply.
    InvalidJson,
    /// The object lacks a required field (or it is not a string).
    MissingField,
    /// A configuration value is not one of the offered choices.
    InvalidValue,
    EmptyQuery,
    TooLong,
    /// The query repeats (most of) the document instead of asking about it.
    CopiesDocument,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::InvalidJson => "invalid_json",
            Malformed::MissingField => "missing_field",
            Malformed::InvalidValue => "invalid_value",
            Malformed::EmptyQuery => "empty_query",
            Malformed::TooLong => "too_long",
            Malformed::CopiesDocument => "copies_document",
        }
    }
}

/// The first JSON object in `text`: the whole text, a fenced block, or the first balanced
/// `{…}` that parses. Reasoning models' `<think>…</think>` preambles are skipped.
pub fn extract_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    let text = match text.rfind("</think>") {
        Some(i) => &text[i + "</think>".len()..],
        None => text,
    };
    if let Ok(Value::Object(m)) = serde_json::from_str(text.trim()) {
        return Some(m);
    }
    let bytes = text.as_bytes();
    let mut start = 0;
    while let Some(off) = text[start..].find('{') {
        let open = start + off;
        if let Some(close) = balanced_end(bytes, open) {
            if let Ok(Value::Object(m)) = serde_json::from_str(&text[open..=close]) {
                return Some(m);
            }
        }
        start = open + 1;
    }
    None
}

/// Index of the `}` closing the `{` at `open`, honouring JSON strings and escapes.
fn balanced_end(bytes: &[u8], open: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// A required string field.
pub fn string_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, Malformed> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(Malformed::MissingField),
    }
}

/// Lower-case, whitespace collapsed, trailing punctuation dropped: the form used to detect
/// duplicate queries and copied documents.
pub fn normalize(text: &str) -> String {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    words
        .join(" ")
        .trim_end_matches(|c: char| c.is_ascii_punctuation())
        .to_string()
}

/// The query in a reply, checked: non-empty, at most `max_chars`, and not a copy of the
/// document (equal to it after normalisation, or a verbatim span covering ≥ 80% of it).
pub fn query_from_reply(text: &str, document: &str, max_chars: usize) -> Result<String, Malformed> {
    let obj = extract_object(text).ok_or(Malformed::InvalidJson)?;
    let query = string_field(&obj, "query")?;
    let query = query.trim().to_string();
    if query.is_empty() {
        return Err(Malformed::EmptyQuery);
    }
    if query.chars().count() > max_chars {
        return Err(Malformed::TooLong);
    }
    let (q, d) = (normalize(&query), normalize(document));
    let copies = q == d || (d.contains(&q) && q.len() * 5 >= d.len() * 4) || q.contains(&d);
    if copies && !d.is_empty() {
        return Err(Malformed::CopiesDocument);
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_json_in_prose_fences_and_think_blocks() {
        let cases = [
            r#"{"query": "a"}"#,
            "```json\n{\"query\": \"a\"}\n```",
            "Sure! Here it is: {\"query\": \"a\"} Hope it helps {not json}",
            "<think>maybe {\"query\": \"wrong\"}</think>\n{\"query\": \"a\"}",
            r#"{ "note": "brace } inside", "query": "a" }"#,
        ];
        for c in cases {
            let m = extract_object(c).unwrap_or_else(|| panic!("no object in {c:?}"));
            assert_eq!(m["query"], "a", "{c:?}");
        }
        assert!(extract_object("no braces").is_none());
        assert!(extract_object(r#"{"query": "trunc"#).is_none());
    }

    #[test]
    fn query_checks_name_the_problem() {
        let doc = "Rust is a systems programming language focused on safety and speed.";
        let q = |t: &str| query_from_reply(t, doc, 40);
        assert_eq!(q(r#"{"query": " why rust "}"#), Ok("why rust".into()));
        assert_eq!(q("not json"), Err(Malformed::InvalidJson));
        assert_eq!(q(r#"{"question": "x"}"#), Err(Malformed::MissingField));
        assert_eq!(q(r#"{"query": 3}"#), Err(Malformed::MissingField));
        assert_eq!(q(r#"{"query": "  "}"#), Err(Malformed::EmptyQuery));
        assert_eq!(
            q(r#"{"query": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#),
            Err(Malformed::TooLong)
        );
        let copy = format!(r#"{{"query": "{}"}}"#, doc.to_uppercase());
        assert_eq!(
            query_from_reply(&copy, doc, 500),
            Err(Malformed::CopiesDocument)
        );
        // A short span of the document is a fair keyword query.
        assert_eq!(
            query_from_reply(r#"{"query": "systems programming language"}"#, doc, 500),
            Ok("systems programming language".into())
        );
    }

    #[test]
    fn normalization_folds_case_space_and_final_punctuation() {
        assert_eq!(normalize("  What  is RUST?? "), "what is rust");
    }
}
