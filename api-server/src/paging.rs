//! `limit`, `marker`, `sort_key`, `sort_dir` as Ironic reads them, and the
//! `next` link of a page.

use std::collections::HashMap;

use ferric_common::db::Paging;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

pub fn parse(q: &HashMap<String, String>, max_limit: u32, sort_keys: &[&str]) -> ApiResult<Paging> {
    let mut p = Paging { limit: Some(i64::from(max_limit)), ..Default::default() };
    if let Some(l) = q.get("limit") {
        let n: i64 =
            l.parse().map_err(|_| ApiError::bad_request(format!("Invalid limit {l:?}: must be an integer")))?;
        if n < 0 {
            return Err(ApiError::bad_request("Limit must be positive"));
        }
        if n > 0 {
            p.limit = Some(n.min(i64::from(max_limit)));
        }
    }
    if let Some(m) = q.get("marker") {
        p.marker = Some(
            Uuid::parse_str(m).map_err(|_| ApiError::bad_request(format!("Invalid marker {m}: expected a UUID")))?,
        );
    }
    if let Some(k) = q.get("sort_key") {
        if !sort_keys.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!("The sort_key value \"{k}\" is an invalid field for sorting")));
        }
        p.sort_key = k.clone();
    }
    if let Some(d) = q.get("sort_dir") {
        p.descending = match d.as_str() {
            "asc" => false,
            "desc" => true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid sort direction: {other}. Acceptable values are 'asc' or 'desc'"
                )));
            }
        };
    }
    Ok(p)
}

/// The `next` URL for a page that was cut at `limit`, keeping the other
/// query arguments.
pub fn next_url(base: &str, path: &str, q: &HashMap<String, String>, limit: i64, last: &Uuid) -> String {
    let mut args: Vec<(String, String)> =
        q.iter().filter(|(k, _)| *k != "limit" && *k != "marker").map(|(k, v)| (k.clone(), v.clone())).collect();
    args.sort();
    let mut s = String::new();
    for (k, v) in args {
        s.push_str(&format!("{}={}&", enc(&k), enc(&v)));
    }
    format!("{base}/v1/{path}?{s}limit={limit}&marker={last}")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~,".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
