//! `/v1/nodes/<node>/traits` (1.37): list, replace all, add one, remove
//! one or all. Each change goes to the node's owner, which makes it under
//! the node's lock (`SetNodeTraits`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferric_common::model::Node;
use ferric_common::proto::NodeTraitsRequest;
use ferric_common::proto::node_traits_request::Op;
use serde_json::{Value, json};

use crate::auth::policy::Rule;
use crate::context::{AppState, Ctx, State};
use crate::error::{ApiError, ApiResult};

/// os-traits' standard trait names, sorted (`scripts/gen-os-traits.sh`
/// writes the file from the pinned release; its first line says which).
const OS_TRAITS: &str = include_str!("os_traits.txt");

fn is_standard(t: &str) -> bool {
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| OS_TRAITS.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect());
    names.binary_search(&t).is_ok()
}

/// Whether `t` is a trait name Ironic accepts (its `validate_trait`): at
/// most 255 characters, and one of os-traits' standard traits or a custom
/// one matching `^CUSTOM_[A-Z0-9_]+$`.
pub fn valid_trait(t: &str) -> bool {
    if t.is_empty() || t.len() > 255 {
        return false;
    }
    let custom = t.strip_prefix("CUSTOM_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    });
    custom || is_standard(t)
}

/// Check a list of traits from a request body.
pub fn traits_from(v: &Value, field: &str) -> ApiResult<Vec<String>> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => return Err(ApiError::bad_request(format!("Invalid value for {field}: {other} is not a list"))),
    };
    list.iter()
        .map(|t| match t.as_str() {
            Some(s) if valid_trait(s) => Ok(s.to_string()),
            _ => Err(invalid_trait(&t.to_string())),
        })
        .collect()
}

fn invalid_trait(t: &str) -> ApiError {
    ApiError::bad_request(format!(
        "Invalid trait {t}: a valid trait is no longer than 255 characters and is either a standard trait of \
         os-traits or a custom trait that matches ^CUSTOM_[A-Z0-9_]+$"
    ))
}

/// 404 below 1.37, as Ironic's node sub-resources.
fn check_version(ctx: &Ctx) -> ApiResult<()> {
    if ctx.v.at_least(37) { Ok(()) } else { Err(ApiError::not_found("The resource could not be found.")) }
}

async fn send(st: &AppState, node: &Node, op: Op, traits: Vec<String>) -> ApiResult<()> {
    st.fwd
        .call(AppState::route(node), |mut c, epoch| {
            let r =
                NodeTraitsRequest { epoch, node_uuid: node.uuid.to_string(), op: op as i32, traits: traits.clone() };
            async move { c.set_node_traits(r).await }
        })
        .await?;
    Ok(())
}

pub async fn list(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<Json<Value>> {
    check_version(&ctx)?;
    let node = st.node_for(&ctx, &ident, Rule::NodeTraitsList).await?;
    Ok(Json(json!({"traits": node.traits})))
}

/// `PUT /v1/nodes/<node>/traits` `{"traits": [...]}`: replace them all.
pub async fn set_all(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path(ident): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    check_version(&ctx)?;
    ctx.authorize_own(Rule::NodeTraitsSet)?;
    let body: Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request(
            "A single node trait may be added via PUT /v1/nodes/<node identifier>/traits/<trait> with no body, or \
             all node traits may be replaced via PUT /v1/nodes/<node identifier>/traits with the list of traits \
             specified in the request body.",
        )
    })?;
    let obj = body.as_object().ok_or_else(|| ApiError::bad_request("The request body must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| *k != "traits") {
        return Err(ApiError::bad_request(format!("Unknown argument: \"{k}\"")));
    }
    let traits =
        traits_from(obj.get("traits").ok_or_else(|| ApiError::bad_request("Missing argument: \"traits\""))?, "traits")?;
    let node = st.node_for(&ctx, &ident, Rule::NodeTraitsSet).await?;
    send(&st, &node, Op::Set, traits).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/nodes/<node>/traits/<trait>`: add one (204, `Location`).
pub async fn add_one(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path((ident, t)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Response> {
    check_version(&ctx)?;
    ctx.authorize_own(Rule::NodeTraitsSet)?;
    if !valid_trait(&t) {
        return Err(invalid_trait(&t));
    }
    if !body.is_empty() && serde_json::from_slice::<Value>(&body).is_ok_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request("No body should be provided when adding a trait"));
    }
    let node = st.node_for(&ctx, &ident, Rule::NodeTraitsSet).await?;
    send(&st, &node, Op::Add, vec![t.clone()]).await?;
    let location = format!("{}/v1/nodes/{ident}/traits/{t}", ctx.base);
    Ok((StatusCode::NO_CONTENT, [(header::LOCATION, location)]).into_response())
}

pub async fn remove_all(AxState(st): AxState<State>, ctx: Ctx, Path(ident): Path<String>) -> ApiResult<StatusCode> {
    check_version(&ctx)?;
    ctx.authorize_own(Rule::NodeTraitsDelete)?;
    let node = st.node_for(&ctx, &ident, Rule::NodeTraitsDelete).await?;
    send(&st, &node, Op::Set, Vec::new()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove_one(
    AxState(st): AxState<State>,
    ctx: Ctx,
    Path((ident, t)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_version(&ctx)?;
    ctx.authorize_own(Rule::NodeTraitsDelete)?;
    let node = st.node_for(&ctx, &ident, Rule::NodeTraitsDelete).await?;
    if !node.traits.contains(&t) {
        return Err(ApiError::not_found(format!("Node {} doesn't have a trait '{t}'", node.uuid)));
    }
    send(&st, &node, Op::Remove, vec![t]).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trait_names_as_ironic_accepts_them() {
        for ok in [
            "CUSTOM_GPU",
            "CUSTOM_A_1",
            "HW_CPU_X86_AVX2",
            "COMPUTE_NET_ATTACH_INTERFACE",
            "STORAGE_DISK_SSD",
            "OWNER_NOVA",
            "MISC_SHARES_VIA_AGGREGATE",
        ] {
            assert!(valid_trait(ok), "{ok}");
        }
        let long = format!("CUSTOM_{}", "X".repeat(249));
        assert_eq!(long.len(), 256);
        for bad in [
            "",
            "CUSTOM_",
            "custom_gpu",
            "CUSTOM_gpu",
            "CUSTOM-GPU",
            "GPU",
            "HW_",
            "FOO_BAR",
            "HW_NOT_A_STANDARD_TRAIT",
            "COMPUTE_",
            "CUSTOM_ A",
            long.as_str(),
        ] {
            assert!(!valid_trait(bad), "{bad:?}");
        }
        assert!(valid_trait(&long[..255]));
        // binary search needs the generated list sorted as Rust compares
        let names: Vec<&str> = OS_TRAITS.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(names.len() > 300, "{} standard traits", names.len());
        assert!(names.windows(2).all(|w| w[0] < w[1]), "os_traits.txt is not sorted");
        assert!(names.iter().all(|n| is_standard(n)));
        assert_eq!(
            traits_from(&json!(["CUSTOM_A", "HW_CPU_X86_AVX2"]), "traits").unwrap(),
            vec!["CUSTOM_A", "HW_CPU_X86_AVX2"]
        );
        assert_eq!(traits_from(&Value::Null, "traits").unwrap(), Vec::<String>::new());
        assert!(traits_from(&json!("CUSTOM_A"), "traits").unwrap_err().message.contains("is not a list"));
        assert!(traits_from(&json!(["CUSTOM_A", 1]), "traits").unwrap_err().message.contains("Invalid trait 1"));
    }
}
