//! RFC 6902 JSON Patch as Ironic applies it: operations `add`, `replace`
//! and `remove` only, applied one after the other; `add` on an existing
//! key replaces it; new keys at the root of a resource are refused.

use serde_json::{Map, Value};

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    pub op: String,
    pub path: Vec<String>,
    pub value: Option<Value>,
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// Parse and check a patch document.
pub fn parse(body: &Value) -> Result<Vec<Op>, ApiError> {
    let list = body
        .as_array()
        .ok_or_else(|| ApiError::bad_request("Invalid patch: a JSON Patch must be a list of operations"))?;
    if list.is_empty() {
        return Err(ApiError::bad_request("Invalid patch: the list of operations is empty"));
    }
    list.iter()
        .map(|o| {
            let obj = o
                .as_object()
                .ok_or_else(|| ApiError::bad_request("Invalid patch: every operation must be an object"))?;
            let op = obj
                .get("op")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("Invalid patch: an operation is missing \"op\""))?;
            if !matches!(op, "add" | "replace" | "remove") {
                return Err(ApiError::bad_request(format!(
                    "Invalid patch: operation \"{op}\" is not supported; use add, replace or remove"
                )));
            }
            let path = obj
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_request("Invalid patch: an operation is missing \"path\""))?;
            if !path.starts_with('/') || path.len() < 2 {
                return Err(ApiError::bad_request(format!("Invalid patch: '{path}' is not a valid JSON pointer")));
            }
            let value = obj.get("value").cloned();
            if op != "remove" && value.is_none() {
                return Err(ApiError::bad_request(format!("Invalid patch: '{op}' on '{path}' needs a \"value\"")));
            }
            Ok(Op { op: op.to_string(), path: path[1..].split('/').map(unescape).collect(), value })
        })
        .collect()
}

/// Apply the operations to `doc` (the resource's document). A root key
/// that is removed is reset to `Value::Null` (the caller maps it to the
/// field's default).
pub fn apply(doc: &mut Map<String, Value>, ops: &[Op]) -> Result<(), ApiError> {
    for op in ops {
        let display = format!("/{}", op.path.join("/"));
        let (first, rest) = op.path.split_first().expect("parse guarantees a path");
        if rest.is_empty() {
            match op.op.as_str() {
                "remove" => {
                    if !doc.contains_key(first) {
                        return Err(ApiError::bad_request(format!("Can't remove non-existent object '{first}'")));
                    }
                    doc.insert(first.clone(), Value::Null);
                }
                _ => {
                    if !doc.contains_key(first) {
                        return Err(ApiError::bad_request(format!(
                            "Adding a new attribute ({display}) to the root of the resource is not allowed"
                        )));
                    }
                    doc.insert(first.clone(), op.value.clone().expect("checked"));
                }
            }
            continue;
        }
        let mut cur =
            doc.get_mut(first).ok_or_else(|| ApiError::bad_request(format!("Can't find the path {display}")))?;
        for (i, key) in rest.iter().enumerate() {
            let last = i == rest.len() - 1;
            if last {
                apply_leaf(cur, key, op, &display)?;
                break;
            }
            cur = match cur {
                Value::Object(m) => m.get_mut(key),
                Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                Value::Null => None,
                _ => None,
            }
            .ok_or_else(|| ApiError::bad_request(format!("Can't find the path {display}")))?;
        }
    }
    Ok(())
}

fn apply_leaf(parent: &mut Value, key: &str, op: &Op, display: &str) -> Result<(), ApiError> {
    match parent {
        Value::Object(m) => match op.op.as_str() {
            "remove" => m
                .remove(key)
                .map(|_| ())
                .ok_or_else(|| ApiError::bad_request(format!("Can't remove non-existent object '{key}'"))),
            "replace" if !m.contains_key(key) => {
                Err(ApiError::bad_request(format!("Can't replace non-existent object '{key}'")))
            }
            _ => {
                m.insert(key.to_string(), op.value.clone().expect("checked"));
                Ok(())
            }
        },
        Value::Array(a) => {
            let idx = if key == "-" && op.op == "add" {
                a.len()
            } else {
                key.parse::<usize>().map_err(|_| ApiError::bad_request(format!("Invalid array index in {display}")))?
            };
            match op.op.as_str() {
                "add" if idx <= a.len() => {
                    a.insert(idx, op.value.clone().expect("checked"));
                    Ok(())
                }
                "replace" if idx < a.len() => {
                    a[idx] = op.value.clone().expect("checked");
                    Ok(())
                }
                "remove" if idx < a.len() => {
                    a.remove(idx);
                    Ok(())
                }
                _ => Err(ApiError::bad_request(format!("Array index out of range in {display}"))),
            }
        }
        _ => Err(ApiError::bad_request(format!("Can't find the path {display}: its parent is not an object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Map<String, Value> {
        json!({"name": "n1", "extra": {"a": 1}, "driver_info": {}, "traits": ["x"]}).as_object().unwrap().clone()
    }

    #[test]
    fn add_replace_remove() {
        let mut d = doc();
        let ops = parse(&json!([
            {"op": "add", "path": "/extra/foo", "value": "bar"},
            {"op": "add", "path": "/name", "value": "n2"},
            {"op": "remove", "path": "/extra/a"},
            {"op": "add", "path": "/driver_info/k~1v", "value": 1},
            {"op": "add", "path": "/traits/-", "value": "y"},
        ]))
        .unwrap();
        apply(&mut d, &ops).unwrap();
        assert_eq!(
            Value::Object(d),
            json!({"name": "n2", "extra": {"foo": "bar"}, "driver_info": {"k/v": 1}, "traits": ["x", "y"]})
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let mut d = doc();
        let e = apply(&mut d, &parse(&json!([{"op": "add", "path": "/foo", "value": 1}])).unwrap()).unwrap_err();
        assert_eq!(e.message, "Adding a new attribute (/foo) to the root of the resource is not allowed");
        let e = apply(&mut d, &parse(&json!([{"op": "remove", "path": "/extra/zz"}])).unwrap()).unwrap_err();
        assert!(e.message.contains("non-existent"), "{}", e.message);
        assert!(parse(&json!([{"op": "move", "path": "/a", "from": "/b"}])).is_err());
        assert!(parse(&json!({"op": "add"})).is_err());
        assert!(parse(&json!([{"op": "add", "path": "/name"}])).is_err());
        // root remove resets to null
        apply(&mut d, &parse(&json!([{"op": "remove", "path": "/name"}])).unwrap()).unwrap();
        assert_eq!(d["name"], Value::Null);
    }
}
