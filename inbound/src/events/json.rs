//! Typed access to provider JSON with clear `Malformed` errors (and no panics).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::InboundError;

pub(crate) type Obj = Map<String, Value>;
type Result<T> = std::result::Result<T, InboundError>;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong(ctx: &str, key: &str, expected: &str, got: &Value) -> InboundError {
    InboundError::malformed(format!(
        "{ctx}: `{key}` must be {expected}, not {}",
        type_name(got)
    ))
}

/// `value` as an object.
pub(crate) fn object<'a>(value: &'a Value, ctx: &str) -> Result<&'a Obj> {
    value.as_object().ok_or_else(|| {
        InboundError::malformed(format!(
            "{ctx}: expected a JSON object, not {}",
            type_name(value)
        ))
    })
}

/// A body that is one object or a non-empty array of objects.
pub(crate) fn one_or_many<'a>(value: &'a Value, ctx: &str) -> Result<Vec<&'a Obj>> {
    match value {
        Value::Object(map) => Ok(vec![map]),
        Value::Array(items) => non_empty_objects(items, ctx),
        other => Err(InboundError::malformed(format!(
            "{ctx}: expected an event object or an array of them, not {}",
            type_name(other)
        ))),
    }
}

/// A non-empty array whose items are all objects.
pub(crate) fn non_empty_objects<'a>(items: &'a [Value], ctx: &str) -> Result<Vec<&'a Obj>> {
    if items.is_empty() {
        return Err(InboundError::malformed(format!(
            "{ctx}: the event array is empty"
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| object(v, &format!("{ctx}[{i}]")))
        .collect()
}

/// A string field; absent, `null` or blank is `None`, another type is `Malformed`.
pub(crate) fn opt_str<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(wrong(ctx, key, "a string", other)),
    }
}

/// A required, non-blank string field.
pub(crate) fn req_str<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<&'a str> {
    opt_str(obj, key, ctx)?
        .ok_or_else(|| InboundError::malformed(format!("{ctx}: `{key}` is missing")))
}

/// An id that providers send as a string or an integer.
pub(crate) fn opt_id(obj: &Obj, key: &str, ctx: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(wrong(ctx, key, "a string or an integer", other)),
    }
}

pub(crate) fn opt_bool(obj: &Obj, key: &str, ctx: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong(ctx, key, "a boolean", other)),
    }
}

pub(crate) fn opt_obj<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<Option<&'a Obj>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(wrong(ctx, key, "an object", other)),
    }
}

pub(crate) fn req_obj<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<&'a Obj> {
    opt_obj(obj, key, ctx)?
        .ok_or_else(|| InboundError::malformed(format!("{ctx}: `{key}` is missing")))
}

pub(crate) fn opt_array<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<Option<&'a [Value]>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(wrong(ctx, key, "an array", other)),
    }
}

/// A required array with at least one item.
pub(crate) fn req_non_empty_array<'a>(obj: &'a Obj, key: &str, ctx: &str) -> Result<&'a [Value]> {
    match opt_array(obj, key, ctx)? {
        Some(items) if !items.is_empty() => Ok(items),
        Some(_) => Err(InboundError::malformed(format!("{ctx}: `{key}` is empty"))),
        None => Err(InboundError::malformed(format!(
            "{ctx}: `{key}` is missing"
        ))),
    }
}

/// An RFC 3339 time field.
pub(crate) fn opt_rfc3339(obj: &Obj, key: &str, ctx: &str) -> Result<Option<DateTime<Utc>>> {
    opt_str(obj, key, ctx)?
        .map(|s| {
            parse_rfc3339(s).ok_or_else(|| {
                InboundError::malformed(format!("{ctx}: `{key}` is not an RFC 3339 time"))
            })
        })
        .transpose()
}

pub(crate) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A unix-time field in seconds, integer or fractional.
pub(crate) fn opt_unix(obj: &Obj, key: &str, ctx: &str) -> Result<Option<DateTime<Utc>>> {
    let bad = || InboundError::malformed(format!("{ctx}: `{key}` is not a unix time"));
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(secs) = n.as_i64() {
                return DateTime::from_timestamp(secs, 0).map(Some).ok_or_else(bad);
            }
            let f = n.as_f64().filter(|f| f.is_finite()).ok_or_else(bad)?;
            // Whole seconds and the fraction separately: an f64 of today's unix time only
            // keeps about microseconds, and rounding to those is what providers mean.
            let secs = f.floor();
            if !(-8.2e12..=8.2e12).contains(&secs) {
                return Err(bad());
            }
            let micros = ((f - secs) * 1_000_000.0).round().clamp(0.0, 999_999.0) as u32;
            DateTime::from_timestamp(secs as i64, micros * 1_000)
                .map(Some)
                .ok_or_else(bad)
        }
        Some(other) => Err(wrong(ctx, key, "a number", other)),
    }
}

/// The normalised recipient, or `Malformed` (without quoting the value).
pub(crate) fn recipient(raw: &str, ctx: &str) -> Result<String> {
    crate::address::normalise(crate::address::bare(raw), false).ok_or_else(|| {
        InboundError::malformed(format!(
            "{ctx}: the recipient is not a plausible email address"
        ))
    })
}

/// The value of header `name` (case-insensitive) in a list of `{name_key, value_key}`
/// objects, as Postmark (`Name`/`Value`) and SES (`name`/`value`) send them. Items of
/// other shapes are skipped: headers are a hint, not a requirement.
pub(crate) fn header_in_list<'a>(
    items: &'a [Value],
    name_key: &str,
    value_key: &str,
    name: &str,
) -> Option<&'a str> {
    items.iter().find_map(|item| {
        let item = item.as_object()?;
        let n = item.get(name_key)?.as_str()?;
        if n.trim().eq_ignore_ascii_case(name) {
            item.get(value_key)?
                .as_str()
                .map(str::trim)
                .filter(|v| !v.is_empty())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn strings() {
        let o = obj(json!({"a": "x", "b": "  ", "c": null, "d": 3}));
        assert_eq!(opt_str(&o, "a", "t").unwrap(), Some("x"));
        assert_eq!(opt_str(&o, "b", "t").unwrap(), None);
        assert_eq!(opt_str(&o, "c", "t").unwrap(), None);
        assert_eq!(opt_str(&o, "z", "t").unwrap(), None);
        let e = opt_str(&o, "d", "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed inbound payload: t: `d` must be a string, not a number"
        );
        assert!(req_str(&o, "b", "t").is_err());
        assert_eq!(req_str(&o, "a", "t").unwrap(), "x");
    }

    #[test]
    fn ids() {
        let o = obj(json!({"a": 901542550, "b": "x1", "c": 1.5, "d": true}));
        assert_eq!(opt_id(&o, "a", "t").unwrap().as_deref(), Some("901542550"));
        assert_eq!(opt_id(&o, "b", "t").unwrap().as_deref(), Some("x1"));
        assert!(opt_id(&o, "c", "t").is_err());
        assert!(opt_id(&o, "d", "t").is_err());
    }

    #[test]
    fn unix_times() {
        let o = obj(
            json!({"i": 1513299569, "f": 1521472262.908181, "s": "1", "big": 1e300, "neg": -1}),
        );
        assert_eq!(
            opt_unix(&o, "i", "t").unwrap().unwrap().to_rfc3339(),
            "2017-12-15T00:59:29+00:00"
        );
        let f = opt_unix(&o, "f", "t").unwrap().unwrap();
        assert_eq!(f.timestamp(), 1521472262);
        assert_eq!(f.timestamp_subsec_micros(), 908181);
        assert!(opt_unix(&o, "s", "t").is_err());
        assert!(opt_unix(&o, "big", "t").is_err());
        assert_eq!(opt_unix(&o, "neg", "t").unwrap().unwrap().timestamp(), -1);
    }

    #[test]
    fn rfc3339_with_seven_fraction_digits() {
        let t = parse_rfc3339("2016-04-27T16:28:50.3963933-04:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2016-04-27T20:28:50.396393300+00:00");
        assert!(parse_rfc3339("27 Apr 2016").is_none());
    }

    #[test]
    fn one_or_many_shapes() {
        assert_eq!(one_or_many(&json!({"a": 1}), "t").unwrap().len(), 1);
        assert_eq!(one_or_many(&json!([{}, {}]), "t").unwrap().len(), 2);
        assert!(one_or_many(&json!([]), "t").is_err());
        assert!(one_or_many(&json!([{}, 1]), "t").is_err());
        assert!(one_or_many(&json!("x"), "t").is_err());
    }

    #[test]
    fn recipients_are_normalised_and_never_quoted() {
        assert_eq!(
            recipient("\"Jane\" <Jane@Example.com>", "t").unwrap(),
            "jane@example.com"
        );
        let e = recipient("secret name@example.com", "t").unwrap_err();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn headers_in_lists() {
        let items =
            json!([{"name": "From", "value": "a"}, 7, {"name": "message-id", "value": " <x@y> "}]);
        let items = items.as_array().unwrap();
        assert_eq!(
            header_in_list(items, "name", "value", "Message-ID"),
            Some("<x@y>")
        );
        assert_eq!(header_in_list(items, "name", "value", "X-Other"), None);
    }
}
