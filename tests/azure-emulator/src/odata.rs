//! The slice of OData the Graph endpoints we use accept: `$filter` made of
//! `property eq 'literal'` clauses joined by `and` / `or`, and `$select`.
//! Anything else is answered as Graph answers an unsupported query.

/// A parsed `$filter`: an `or` of `and`-groups of equality clauses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub any_of: Vec<Vec<(String, String)>>,
}

impl Filter {
    /// Whether an object matches; `property` reads one string property.
    /// Directory string comparisons are case-insensitive.
    pub fn matches(&self, property: impl Fn(&str) -> Option<String>) -> bool {
        self.any_of.iter().any(|all| {
            all.iter().all(|(prop, value)| property(prop).is_some_and(|v| v.to_lowercase() == value.to_lowercase()))
        })
    }
}

/// Parses a `$filter` value; Err carries the message Graph gives for it.
pub fn parse_filter(input: &str) -> Result<Filter, String> {
    let mut rest = input.trim();
    let mut any_of: Vec<Vec<(String, String)>> = vec![Vec::new()];
    loop {
        let (clause, after) = parse_clause(rest)?;
        any_of.last_mut().expect("one group").push(clause);
        rest = after.trim_start();
        if rest.is_empty() {
            return Ok(Filter { any_of });
        }
        let (word, after) = split_word(rest);
        match word.to_ascii_lowercase().as_str() {
            "and" => {}
            "or" => any_of.push(Vec::new()),
            _ => return Err(format!("Invalid filter clause: syntax error at '{rest}'")),
        }
        rest = after.trim_start();
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| c.is_whitespace()).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

fn parse_clause(s: &str) -> Result<((String, String), &str), String> {
    let (property, rest) = split_word(s.trim_start());
    if property.is_empty() || !property.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("Invalid filter clause: unexpected '{property}'"));
    }
    let (op, rest) = split_word(rest.trim_start());
    if !op.eq_ignore_ascii_case("eq") {
        return Err(format!("Unsupported Query: operator '{op}' is not supported here"));
    }
    let (literal, rest) = parse_literal(rest.trim_start())?;
    Ok(((property.to_string(), literal), rest))
}

/// An OData string literal: single-quoted, a quote inside doubled.
fn parse_literal(s: &str) -> Result<(String, &str), String> {
    let Some(body) = s.strip_prefix('\'') else {
        return Err("Invalid filter clause: a string literal was expected".into());
    };
    let mut value = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                value.push('\'');
                chars.next();
                continue;
            }
            return Ok((value, &body[i + 1..]));
        }
        value.push(c);
    }
    Err("Invalid filter clause: unterminated string literal".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escaped_quote_stays_inside_the_literal() {
        let f = parse_filter("displayName eq 'x'' or displayName eq ''appdev'").unwrap();
        assert_eq!(f.any_of, vec![vec![("displayName".to_string(), "x' or displayName eq 'appdev".to_string())]]);
    }

    #[test]
    fn an_unescaped_quote_is_an_injection_the_service_would_evaluate() {
        let f = parse_filter("displayName eq 'x' or displayName eq 'appdev'").unwrap();
        assert_eq!(f.any_of.len(), 2);
        assert!(f.matches(|p| (p == "displayName").then(|| "APPDEV".to_string())));
    }

    #[test]
    fn other_operators_are_unsupported() {
        assert!(parse_filter("startswith(displayName,'a')").is_err());
        assert!(parse_filter("displayName ne 'a'").is_err());
        assert!(parse_filter("displayName eq 'a").is_err());
    }
}
