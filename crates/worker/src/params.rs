//! Named query parameters. The platform's queries use `@tenant_id`, `@app_id`,
//! `@query_id`, `@scheduled_for`, `@window_start` and `@window_end`; an engine binds them as
//! real parameters, never by splicing values into the SQL text. This module rewrites the
//! names into an engine's placeholders, skipping string literals, quoted identifiers,
//! dollar-quoted bodies and comments.

use chrono::{DateTime, Utc};
use jobs_core::JobMessage;

/// The value of a named parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Text(String),
    Timestamp(DateTime<Utc>),
}

/// Names every query may use, in placeholder order.
pub const NAMES: [&str; 6] = ["tenant_id", "app_id", "query_id", "scheduled_for", "window_start", "window_end"];

/// The values of [`NAMES`] for one job.
pub fn values(job: &JobMessage) -> [ParamValue; 6] {
    [
        ParamValue::Text(job.tenant_id.clone()),
        ParamValue::Text(job.app_id.clone()),
        ParamValue::Text(job.query_id.clone()),
        ParamValue::Timestamp(job.nominal_time),
        ParamValue::Timestamp(job.window_start),
        ParamValue::Timestamp(job.window_end),
    ]
}

/// Rewrites every `@name` of [`NAMES`] outside literals and comments with
/// `placeholder(index)` (0-based index into [`NAMES`]). Other `@` uses (PostgreSQL's `@>`
/// operator, unknown names) are left alone.
pub fn rewrite(sql: &str, placeholder: impl Fn(usize) -> String) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + 32);
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => i = skip_quoted(bytes, i, b'\''),
            b'"' => i = skip_quoted(bytes, i, b'"'),
            b'`' => i = skip_quoted(bytes, i, b'`'),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = find(bytes, i + 2, b"*/").map_or(bytes.len(), |p| p + 2);
            }
            b'$' => i = skip_dollar_quoted(bytes, i),
            b'@' => {
                let start = i + 1;
                let end =
                    start + bytes[start..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
                let prev_is_word =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'@');
                match NAMES.iter().position(|n| n.as_bytes() == &bytes[start..end]) {
                    Some(index) if !prev_is_word => {
                        out.push_str(&sql[copied..i]);
                        out.push_str(&placeholder(index));
                        copied = end;
                        i = end;
                    }
                    _ => i = end.max(i + 1),
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied..]);
    out
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| from + p)
}

/// Skips a quoted section starting at `start` (doubled quotes escape); returns the index
/// after the closing quote, or the end of input.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        if bytes[i] == b'\\' && quote == b'\'' && start > 0 && matches!(bytes[start - 1], b'E' | b'e') {
            i += 2;
            continue;
        }
        i += 1;
    }
    bytes.len()
}

/// Skips `$tag$ … $tag$` (PostgreSQL dollar quoting). A `$` that does not open one (a
/// positional `$1`) is stepped over.
fn skip_dollar_quoted(bytes: &[u8], start: usize) -> usize {
    let tag_len = bytes[start + 1..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
    let close = start + 1 + tag_len;
    let starts_with_digit = bytes.get(start + 1).is_some_and(u8::is_ascii_digit);
    if bytes.get(close) != Some(&b'$') || starts_with_digit {
        return start + 1;
    }
    let tag = &bytes[start..=close];
    find(bytes, close + 1, tag).map_or(bytes.len(), |p| p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> String {
        rewrite(sql, |i| format!("${}", i + 1))
    }

    #[test]
    fn named_parameters_become_placeholders() {
        assert_eq!(
            pg("SELECT * FROM s WHERE ts >= @window_start AND ts < @window_end AND t = @tenant_id"),
            "SELECT * FROM s WHERE ts >= $5 AND ts < $6 AND t = $1"
        );
        assert_eq!(pg("SELECT @scheduled_for,@app_id"), "SELECT $4,$2");
    }

    #[test]
    fn literals_identifiers_and_comments_are_left_alone() {
        let sql = "SELECT '@tenant_id', \"@app_id\", $$@query_id$$, $x$ @window_end $x$ -- @window_start\n/* @tenant_id */ @tenant_id";
        assert_eq!(pg(sql), sql.replace("*/ @tenant_id", "*/ $1"));
        assert_eq!(pg("SELECT 'it''s @tenant_id' , @app_id"), "SELECT 'it''s @tenant_id' , $2");
        assert_eq!(pg("SELECT E'\\' @tenant_id', @app_id"), "SELECT E'\\' @tenant_id', $2");
    }

    #[test]
    fn other_uses_of_at_are_untouched() {
        for sql in [
            "SELECT tags @> ARRAY['a']",
            "SELECT @ -5",
            "SELECT @tenant_idx",
            "SELECT a@tenant_id",
            "SELECT @@tenant_id",
        ] {
            assert_eq!(pg(sql), sql);
        }
    }

    #[test]
    fn positional_dollars_are_not_dollar_quotes() {
        assert_eq!(pg("SELECT $1, @tenant_id"), "SELECT $1, $1");
    }

    #[test]
    fn unterminated_sections_do_not_panic() {
        for sql in ["SELECT '@tenant_id", "SELECT \"x", "/* @tenant_id", "$a$ @tenant_id", "@", "SELECT 1 --"] {
            let _ = pg(sql);
        }
    }
}
