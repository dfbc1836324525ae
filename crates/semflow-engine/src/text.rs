//! Text helpers every layer may use: SQL string literals and `${VAR}` substitution in the
//! files semflow reads (pipeline specs, synthesis configs, SQL files).

/// `s` as a SQL string literal: in single quotes, with single quotes doubled.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Replaces `${VAR}` and `${VAR:-default}`; an unset variable without a default is an error.
pub fn substitute_env(text: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed ${ in the file".to_string())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (std::env::var(name), default) {
            (Ok(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_substitution() {
        std::env::set_var("SEMFLOW_SPEC_TEST", "x:1");
        assert_eq!(
            substitute_env("a ${SEMFLOW_SPEC_TEST} ${SEMFLOW_SPEC_UNSET:-d} b").unwrap(),
            "a x:1 d b"
        );
        assert!(substitute_env("${SEMFLOW_SPEC_UNSET}")
            .unwrap_err()
            .contains("SEMFLOW_SPEC_UNSET"));
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(sql_string("it's"), "'it''s'");
    }
}
