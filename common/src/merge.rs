//! Three-way merge of JSON documents: what an update changed, applied to
//! the freshest copy.
//!
//! The API reads a node, applies the user's JSON Patch to its copy and
//! sends the conductor both its copy (`base`) and the result (`wanted`).
//! Between the read and the conductor's lock the node may have changed
//! (a clean that failed turned `maintenance` on; another PATCH added a key
//! to `extra`). Writing `wanted` back whole would undo those changes — a
//! lost update. Merging writes only what the patch changed: a value the
//! patch left alone keeps its fresh value; objects merge key by key, so two
//! PATCHes that add different keys to one object both land; a value both
//! changed ends as the patch wants (last writer wins, as in Ironic).

use serde_json::{Map, Value};

/// `fresh` with the changes from `base` to `wanted` applied.
pub fn merge3(base: &Value, wanted: &Value, fresh: &Value) -> Value {
    if wanted == base {
        return fresh.clone();
    }
    match (base, wanted, fresh) {
        (Value::Object(b), Value::Object(w), Value::Object(f)) => Value::Object(merge_objects(b, w, f)),
        _ => wanted.clone(),
    }
}

fn merge_objects(
    base: &Map<String, Value>,
    wanted: &Map<String, Value>,
    fresh: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = fresh.clone();
    for (k, w) in wanted {
        match (base.get(k), out.get(k)) {
            // added or changed by the patch
            (None, _) => {
                out.insert(k.clone(), w.clone());
            }
            (Some(b), Some(f)) => {
                let merged = merge3(b, w, f);
                out.insert(k.clone(), merged);
            }
            // removed meanwhile: the patch's change of it brings it back
            (Some(b), None) if b != w => {
                out.insert(k.clone(), w.clone());
            }
            (Some(_), None) => {}
        }
    }
    // removed by the patch
    for k in base.keys().filter(|k| !wanted.contains_key(*k)) {
        out.remove(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_the_patch_left_alone_keeps_its_fresh_value() {
        // a PATCH of `extra` read the node before a failed clean turned
        // maintenance on: maintenance stays on
        let base = json!({"maintenance": false, "extra": {}});
        let wanted = json!({"maintenance": false, "extra": {"a": 1}});
        let fresh = json!({"maintenance": true, "extra": {}, "fault": "clean failure"});
        assert_eq!(
            merge3(&base, &wanted, &fresh),
            json!({"maintenance": true, "extra": {"a": 1}, "fault": "clean failure"})
        );
    }

    #[test]
    fn objects_merge_key_by_key_and_removals_apply() {
        let base = json!({"extra": {"keep": 1, "drop": 2, "nested": {"x": 1, "y": 1}}});
        let wanted = json!({"extra": {"keep": 1, "mine": 3, "nested": {"x": 2, "y": 1}}});
        // meanwhile another PATCH added "theirs" and changed nested.y
        let fresh = json!({"extra": {"keep": 1, "drop": 2, "theirs": 4, "nested": {"x": 1, "y": 5}}});
        assert_eq!(
            merge3(&base, &wanted, &fresh),
            json!({"extra": {"keep": 1, "mine": 3, "theirs": 4, "nested": {"x": 2, "y": 5}}})
        );
    }

    #[test]
    fn a_value_both_changed_ends_as_the_patch_wants() {
        let base = json!({"name": "a", "list": [1]});
        let wanted = json!({"name": "b", "list": [1, 2]});
        let fresh = json!({"name": "c", "list": [1, 3]});
        assert_eq!(merge3(&base, &wanted, &fresh), json!({"name": "b", "list": [1, 2]}));
        // no change at all: fresh, whatever it is
        assert_eq!(merge3(&base, &base, &fresh), fresh);
        // a type change is a change
        assert_eq!(merge3(&json!({"v": {}}), &json!({"v": 1}), &json!({"v": {"k": 1}})), json!({"v": 1}));
    }
}
