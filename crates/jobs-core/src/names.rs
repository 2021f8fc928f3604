//! Identifier rules both sides enforce: the controller skips catalog items that break them,
//! the worker refuses job messages that do (a message may not come from our controller).

/// A query id: `[a-z0-9][a-z0-9_-]{0,62}` (the platform contract).
pub fn check_query_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && id.len() <= 63 { Ok(()) } else { Err("must match [a-z0-9][a-z0-9_-]{0,62}".into()) }
}

/// A tenant or app id: 1 to 63 characters of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit. Tenant ids name per-tenant schemas and datasets, so they stay short and plain.
pub fn check_entity_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= 63 {
        Ok(())
    } else {
        Err("must be 1 to 63 characters of [A-Za-z0-9_.-], starting with a letter or digit".into())
    }
}

/// A destination table: a plain identifier `[A-Za-z_][A-Za-z0-9_]{0,62}` relative to the
/// tenant's own space: no schema qualification, no quoting.
pub fn check_destination(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !(first_ok && rest_ok && name.len() <= 63) {
        return Err("must be a plain table name [A-Za-z_][A-Za-z0-9_]{0,62} (no schema, no quotes)".into());
    }
    if name.starts_with("pg_") {
        return Err("names starting with pg_ are reserved".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_follow_the_platform_contract() {
        for ok in ["hourly-revenue", "q1", "0", "a_b-c"] {
            assert!(check_query_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Hourly", "-x", "a b", "é", &"x".repeat(64)] {
            assert!(check_query_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destinations_are_plain_identifiers() {
        for ok in ["revenue_by_store", "_t", "T1"] {
            assert!(check_destination(ok).is_ok(), "{ok}");
        }
        for bad in ["", "public.t", "\"t\"", "t; drop table x", "1t", "pg_class", &"x".repeat(64)] {
            assert!(check_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entity_ids_are_short_and_plain() {
        for ok in ["acme", "Acme-01", "t.1"] {
            assert!(check_entity_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_entity_id(bad).is_err(), "{bad}");
        }
    }
}
