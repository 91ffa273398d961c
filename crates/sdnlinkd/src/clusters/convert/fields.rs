//! Typed reads of an object's JSON fields: a type error makes the whole object unusable, as
//! it would for a typed client.

use kube::core::DynamicObject;
use serde_json::{Map, Value};

/// A type error in the object's JSON: the whole object is unusable, as a typed client would
/// fail to decode it.
pub(super) struct Bad(pub(super) String);

pub(super) fn field<'a>(o: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.get(name).filter(|v| !v.is_null())
}

pub(super) fn opt_obj<'a>(
    o: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Bad(format!("{name} is not an object"))),
    }
}

pub(super) fn opt_arr<'a>(o: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], Bad> {
    match field(o, name) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Bad(format!("{name} is not a list"))),
    }
}

pub(super) fn opt_str<'a>(o: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Bad(format!("{name} is not a string"))),
    }
}

pub(super) fn opt_bool(o: &Map<String, Value>, name: &str) -> Result<Option<bool>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Bad(format!("{name} is not a boolean"))),
    }
}

pub(super) fn opt_int(o: &Map<String, Value>, name: &str) -> Result<Option<i64>, Bad> {
    match field(o, name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Bad(format!("{name} is not an integer"))),
    }
}

pub(super) fn as_obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Bad> {
    v.as_object()
        .ok_or_else(|| Bad(format!("{what} is not an object")))
}

pub(super) fn data(o: &DynamicObject) -> Result<&Map<String, Value>, Bad> {
    as_obj(&o.data, "the object")
}

pub(super) fn port_u16(p: i64) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}
