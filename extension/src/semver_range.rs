//! Syntax check of a Talos compatibility constraint, as Talos parses it: a `v` before a digit is
//! dropped, then the rest must be a semver range in the grammar of blang/semver v4
//! (`>=1.12.0 <2.0.0 || =1.11.5`, a space after an operator is allowed, `x` wildcards).

/// Returns `Err(reason)` when `constraint` would not parse on the node.
pub fn check(constraint: &str) -> Result<(), String> {
    let trimmed = strip_v(constraint);
    let tokens = split_and_trim(&trimmed);
    if tokens.is_empty() {
        return Err("the range is empty".into());
    }
    let mut expect_part = true;
    for token in &tokens {
        if token == "||" {
            if expect_part {
                return Err("`||` must sit between two comparisons".into());
            }
            expect_part = true;
            continue;
        }
        comparator(token)?;
        expect_part = false;
    }
    if expect_part {
        return Err("the range ends with `||`".into());
    }
    Ok(())
}

fn strip_v(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == 'v' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            continue;
        }
        out.push(c);
    }
    out
}

/// Splits on spaces, except after an operator character (so `>= 1.2.3` is one token).
fn split_and_trim(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut last = ' ';
    for c in s.chars() {
        if c == ' ' {
            if !matches!(last, '>' | '<' | '=') && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
            last = c;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn comparator(token: &str) -> Result<(), String> {
    let ops = [">=", "<=", "!=", "==", ">", "<", "=", "!"];
    let version = ops
        .iter()
        .find_map(|op| token.strip_prefix(op))
        .unwrap_or(token);
    if version.is_empty() {
        return Err(format!("`{token}` has an operator but no version"));
    }
    parse_version(version).map_err(|e| format!("`{token}`: {e}"))
}

fn parse_version(v: &str) -> Result<(), String> {
    let (core, build) = match v.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let wildcard = |p: &str| matches!(p, "x" | "X" | "*");
    match parts.as_slice() {
        [major] if wildcard(major) => return Ok(()),
        [major, minor] if wildcard(minor) => return number(major, "major"),
        [major, minor, patch] => {
            number(major, "major")?;
            if wildcard(minor) && wildcard(patch) {
                return Ok(());
            }
            number(minor, "minor")?;
            if !wildcard(patch) {
                number(patch, "patch")?;
            }
        }
        _ => {
            return Err(format!(
                "`{v}` is not MAJOR.MINOR.PATCH (Talos needs all three numbers, or an x wildcard)"
            ));
        }
    }
    if let Some(pre) = pre {
        for id in pre.split('.') {
            identifier(id, true)?;
        }
    }
    if let Some(build) = build {
        for id in build.split('.') {
            identifier(id, false)?;
        }
    }
    Ok(())
}

fn number(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} version `{s}` is not a number"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(format!("{what} version `{s}` has a leading zero"));
    }
    Ok(())
}

fn identifier(id: &str, numeric_no_leading_zero: bool) -> Result<(), String> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("identifier `{id}` must be non-empty [0-9A-Za-z-]"));
    }
    if numeric_no_leading_zero
        && id.len() > 1
        && id.starts_with('0')
        && id.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("numeric identifier `{id}` has a leading zero"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check;

    #[test]
    fn accepts_what_talos_accepts() {
        for ok in [
            ">= v1.12.0",
            ">=v1.12.0",
            ">= 1.12.0 < 2.0.0",
            ">=1.12.0 || =1.11.5",
            "1.12.x",
            ">v1.12.0-alpha.1",
            "!=1.12.3",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_bad_ranges() {
        for bad in [
            "",
            ">= ",
            ">=1.12",
            "~1.12.0",
            ">=1.012.0",
            "|| >=1.0.0",
            ">=1.0.0 ||",
            "latest",
        ] {
            assert!(check(bad).is_err(), "{bad} should be rejected");
        }
    }
}
