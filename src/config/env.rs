//! `${env:VAR}` expansion, as in collector configs.
//!
//! Forms: `${env:VAR}`, `${env:VAR:-default}`, and `$$` for a literal `$`.
//! An unset variable without a default is an error naming the field: a
//! missing secret should stop the gateway, not send an empty credential.

use serde_yaml_ng::Value;

use super::ConfigError;

/// Expands every string in `value` in place; `lookup` reads a variable.
pub fn expand_env(value: &mut Value, path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => {
            *s = expand_str(s, lookup).map_err(|m| ConfigError::field(path.trim_end_matches('.'), m))?;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(item, &format!("{}[{i}]", path.trim_end_matches('.')), lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().map(str::to_owned).unwrap_or_else(|| format!("{k:?}"));
                let child = if path.is_empty() || path.ends_with('.') {
                    format!("{path}{key}")
                } else {
                    format!("{path}.{key}")
                };
                expand_env(v, &child, lookup)?;
            }
        }
        Value::Tagged(t) => expand_env(&mut t.value, path, lookup)?,
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix("${env:") {
            let end = r.find('}').ok_or_else(|| format!("unterminated `${{env:` in {s:?}; expected ${{env:NAME}}"))?;
            let body = &r[..end];
            let (name, default) = match body.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (body, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "invalid variable name {name:?}; expected ${{env:NAME}} with NAME of letters, digits and _"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set; set it or write ${{env:{name}:-default}}"
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(k: &str) -> Option<String> {
        (k == "KEY").then(|| "s3cret".to_owned())
    }

    #[test]
    fn forms() {
        assert_eq!(expand_str("Secret-Key ${env:KEY}", &lookup).unwrap(), "Secret-Key s3cret");
        assert_eq!(expand_str("${env:NOPE:-x}", &lookup).unwrap(), "x");
        assert_eq!(expand_str("a$$b $5", &lookup).unwrap(), "a$b $5");
        assert!(expand_str("${env:NOPE}", &lookup).unwrap_err().contains("NOPE is not set"));
        assert!(expand_str("${env:A-B}", &lookup).unwrap_err().contains("invalid variable name"));
    }

    #[test]
    fn error_names_field_path() {
        let mut v: Value = serde_yaml_ng::from_str("server:\n  headers:\n    Authorization: ${env:MISSING}\n").unwrap();
        let err = expand_env(&mut v, "", &lookup).unwrap_err().to_string();
        assert!(err.starts_with("server.headers.Authorization:"), "{err}");
    }
}
