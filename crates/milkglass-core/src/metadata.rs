use crate::{Invalid, InvalidResult};
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// Typed user metadata of a frame: `{"weather": "sunny", "speed": 3.5, "tags": ["a"],
/// "seen": {"timestamp": "2024-01-01T00:00:00Z"}}`.
pub type Metadata = BTreeMap<String, MetaValue>;

/// One user metadata value. Lists hold scalars of one type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    String(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Timestamp(DateTime<Utc>),
    List(Vec<MetaValue>),
}

impl MetaValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::String(_) => "string",
            MetaValue::Int(_) => "int",
            MetaValue::Float(_) => "float",
            MetaValue::Bool(_) => "bool",
            MetaValue::Timestamp(_) => "timestamp",
            MetaValue::List(_) => "list",
        }
    }

    /// Converts JSON into a typed value; `field` names it in errors.
    pub fn from_json(field: &str, value: &Value) -> InvalidResult<MetaValue> {
        match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{field}[{i}]");
                    let v = Self::scalar_from_json(&at, item)?;
                    if let Some(first) = out.first()
                        && !same_type(first, &v)
                    {
                        return Err(Invalid::new(at, "list items must all have the same type"));
                    }
                    out.push(v);
                }
                Ok(MetaValue::List(out))
            }
            other => Self::scalar_from_json(field, other),
        }
    }

    fn scalar_from_json(field: &str, value: &Value) -> InvalidResult<MetaValue> {
        Ok(match value {
            Value::String(s) => MetaValue::String(s.clone()),
            Value::Bool(b) => MetaValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => MetaValue::Int(i),
                None => {
                    // A whole number past i64 arrives as a u64 or, past that, as a float that
                    // has lost digits: refused rather than silently rounded.
                    let f = n.as_f64().ok_or_else(|| Invalid::new(field, "number out of range"))?;
                    if n.is_u64() || (f.fract() == 0.0 && f.abs() >= i64::MAX as f64) {
                        return Err(Invalid::new(
                            field,
                            "integers must fit in 64 bits (-9223372036854775808 to 9223372036854775807); \
                             send larger ones as strings",
                        ));
                    }
                    crate::check_finite(field, f)?;
                    MetaValue::Float(f)
                }
            },
            Value::Object(map) if map.len() == 1 && map.contains_key("timestamp") => {
                let text = map["timestamp"]
                    .as_str()
                    .ok_or_else(|| Invalid::new(format!("{field}.timestamp"), "must be an RFC 3339 string"))?;
                MetaValue::Timestamp(parse_timestamp(&format!("{field}.timestamp"), text)?)
            }
            Value::Null => return Err(Invalid::new(field, "null is not a metadata value; leave the key out")),
            Value::Array(_) => return Err(Invalid::new(field, "lists may not be nested")),
            Value::Object(_) => {
                return Err(Invalid::new(field, "objects are not metadata values (only {\"timestamp\": \"...\"} is)"));
            }
        })
    }

    pub fn to_json(&self) -> Value {
        match self {
            MetaValue::String(s) => Value::String(s.clone()),
            MetaValue::Int(i) => Value::from(*i),
            MetaValue::Float(f) => Value::from(*f),
            MetaValue::Bool(b) => Value::Bool(*b),
            MetaValue::Timestamp(t) => serde_json::json!({ "timestamp": format_timestamp(t) }),
            MetaValue::List(items) => Value::Array(items.iter().map(MetaValue::to_json).collect()),
        }
    }
}

fn same_type(a: &MetaValue, b: &MetaValue) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The same JSON as [`MetaValue::to_json`], written without building a `Value` first (the upload path
/// serializes every frame's metadata).
impl Serialize for MetaValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MetaValue::String(s) => serializer.serialize_str(s),
            MetaValue::Int(i) => serializer.serialize_i64(*i),
            MetaValue::Float(f) => Value::from(*f).serialize(serializer),
            MetaValue::Bool(b) => serializer.serialize_bool(*b),
            MetaValue::Timestamp(_) | MetaValue::List(_) => self.to_json().serialize(serializer),
        }
    }
}

/// The one text form of stored timestamps: UTC, microseconds, `Z`. Fixed width, so
/// comparing the text compares the instants.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses RFC 3339 timestamps; a missing offset is read as UTC.
pub fn parse_timestamp(field: &str, text: &str) -> InvalidResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(t.and_utc());
        }
    }
    Err(Invalid::new(field, format!("{text:?} is not an RFC 3339 timestamp such as 2024-01-31T12:00:00Z")))
}

/// Converts a JSON object of user metadata, checking keys and values.
pub fn metadata_from_json(field: &str, map: &serde_json::Map<String, Value>) -> InvalidResult<Metadata> {
    let mut out = Metadata::new();
    for (key, value) in map {
        if key.is_empty() || key.len() > 128 || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Invalid::new(
                format!("{field}.{key}"),
                "metadata keys use letters, digits and '_' (1 to 128 characters)",
            ));
        }
        out.insert(key.clone(), MetaValue::from_json(&format!("{field}.{key}"), value)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_follow_json() {
        let m = metadata_from_json(
            "metadata",
            json!({"w": "sunny", "n": 3, "x": 2.5, "b": true, "t": {"timestamp": "2024-01-02T03:04:05Z"}, "l": [1, 2]})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(m["w"].type_name(), "string");
        assert_eq!(m["n"], MetaValue::Int(3));
        assert_eq!(m["x"], MetaValue::Float(2.5));
        assert_eq!(m["t"].type_name(), "timestamp");
        assert_eq!(m["l"], MetaValue::List(vec![MetaValue::Int(1), MetaValue::Int(2)]));
    }

    #[test]
    fn integers_past_64_bits_are_refused_not_rounded() {
        for text in [r#"{"n": 9223372036854775808}"#, r#"{"n": 123456789012345678901234}"#, r#"{"n": -1e30}"#] {
            let map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
            let err = metadata_from_json("metadata", &map).unwrap_err();
            assert_eq!(err.field, "metadata.n", "{text}");
        }
        // JSON does not tell 1e30 from 1000000000000000000000000000000: whole numbers that
        // large are refused either way; fractions and smaller magnitudes are floats.
        let map: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"n": 9223372036854775807, "x": 1.5e18, "y": 2.5, "z": -1e-300}"#).unwrap();
        assert!(metadata_from_json("metadata", &map).is_ok());
    }

    #[test]
    fn rejects_mixed_lists_and_bad_keys() {
        let err = metadata_from_json("metadata", json!({"l": [1, "a"]}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.field, "metadata.l[1]");
        let err = metadata_from_json("metadata", json!({"bad key": 1}).as_object().unwrap()).unwrap_err();
        assert_eq!(err.field, "metadata.bad key");
    }
}
