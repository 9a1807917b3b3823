//! Vendor passthru interfaces: `fake` (test methods) and `no-vendor`.

use async_trait::async_trait;
use serde_json::Value;

use crate::driver::*;
use crate::fake_hooks;

pub struct FakeVendor;

fn method(
    name: &'static str,
    http: &[&'static str],
    is_async: bool,
    attach: bool,
    description: &'static str,
) -> VendorMethod {
    VendorMethod { name, http_methods: http.to_vec(), is_async, description, attach, require_exclusive_lock: is_async }
}

#[async_trait]
impl VendorInterface for FakeVendor {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn methods(&self) -> Vec<VendorMethod> {
        vec![
            method("first_method", &["POST"], true, false, "Records its argument bar in driver_internal_info"),
            method("second_method", &["POST"], false, false, "Returns its arguments"),
            method("get_log", &["GET"], false, true, "Returns a log file as an attachment"),
        ]
    }
    fn driver_methods(&self) -> Vec<VendorMethod> {
        vec![method("driver_method", &["POST", "GET"], false, false, "Echoes its arguments")]
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn call(&self, task: &mut Task, method: &str, body: &Value) -> DriverResult<VendorReturn> {
        match method {
            "first_method" => {
                let bar = body.get("bar").cloned().ok_or_else(|| {
                    DriverError::Invalid("Parameter 'bar' not passed to method 'first_method'.".into())
                })?;
                fake_hooks::record(task, "fake_vendor_bar", bar);
                Ok(VendorReturn::None)
            }
            "second_method" => Ok(VendorReturn::Json(serde_json::json!({"node": task.node.uuid, "args": body}))),
            "get_log" => Ok(VendorReturn::Bytes(format!("log of node {}\n", task.node.uuid).into_bytes())),
            other => Err(DriverError::Invalid(format!("No handler for method {other}"))),
        }
    }
    async fn driver_call(&self, method: &str, body: &Value) -> DriverResult<VendorReturn> {
        match method {
            "driver_method" => Ok(VendorReturn::Json(serde_json::json!({"args": body}))),
            other => Err(DriverError::Invalid(format!("No handler for method {other}"))),
        }
    }
}

/// No vendor methods at all.
pub struct NoVendor;

#[async_trait]
impl VendorInterface for NoVendor {
    fn name(&self) -> &'static str {
        "no-vendor"
    }
    fn methods(&self) -> Vec<VendorMethod> {
        Vec::new()
    }
    fn driver_methods(&self) -> Vec<VendorMethod> {
        Vec::new()
    }
    async fn validate(&self, _task: &Task) -> DriverResult<()> {
        Ok(())
    }
    async fn call(&self, _task: &mut Task, method: &str, _body: &Value) -> DriverResult<VendorReturn> {
        Err(DriverError::Invalid(format!("No handler for method {method}")))
    }
    async fn driver_call(&self, method: &str, _body: &Value) -> DriverResult<VendorReturn> {
        Err(DriverError::Invalid(format!("No handler for method {method}")))
    }
}
