//! Config drives: what cloud-init (or Glean, or Ignition's OpenStack
//! provider) reads on the instance's first boot.
//!
//! A node's `instance_info.configdrive` comes from the provision request
//! in one of Ironic's three forms:
//!
//! * a URL (`http://`, `https://`): the ramdisk fetches it itself;
//! * a gzipped, base64-encoded image, built by the caller (Nova,
//!   metalsmith): passed on after checking it is what it claims to be;
//! * a JSON object with `meta_data`, `user_data`, `network_data`,
//!   `vendor_data` (API 1.56): Ferric builds the image — ISO 9660 with
//!   Joliet, volume label `config-2`, the files under `openstack/latest/`,
//!   as OpenStack's `configdrive.build` writes them — gzips and encodes it.
//!
//! `meta_data` gets the node's `uuid` and `name` unless the caller set
//! them (Ironic does the same); `user_data` that is an object or a list is
//! written as JSON, a string as it is.

use std::io::{Read as _, Write as _};
use std::path::Path;

use base64::Engine as _;
use hadris_iso::joliet::JolietLevel;
use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{BaseIsoLevel, CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{InputEntry, InputTree, IsoImageWriter};
use serde_json::{Map, Value};

/// The volume label cloud-init looks for.
pub const LABEL: &str = "config-2";
/// Largest config drive accepted, unpacked (Ironic's limit is 64 MiB).
pub const MAX_SIZE: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("instance_info.configdrive: {0}")]
pub struct ConfigDriveError(pub String);

fn bad(m: impl Into<String>) -> ConfigDriveError {
    ConfigDriveError(m.into())
}

/// What the agent gets as `configdrive` for the node's configdrive value:
/// `None` when there is none, else a URL or gzipped base64 image.
pub fn for_agent(
    value: Option<&Value>,
    node_uuid: &str,
    node_name: Option<&str>,
) -> Result<Option<String>, ConfigDriveError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => Ok(Some(s.clone())),
        Some(Value::String(s)) => {
            check_encoded(s)?;
            Ok(Some(s.clone()))
        }
        Some(Value::Object(o)) => {
            let iso = build(o, node_uuid, node_name)?;
            Ok(Some(encode(&iso)?))
        }
        Some(other) => Err(bad(format!(
            "a URL, a gzipped base64 image or an object with meta_data/user_data/network_data/vendor_data, not {}",
            kind(other)
        ))),
    }
}

/// The config drive image itself, for a medium the BMC presents (the
/// `ramdisk` deploy on virtual media): `None` when there is none. A URL is
/// refused — only a ramdisk's agent fetches one, and a diskless instance
/// has none.
pub fn image(
    value: Option<&Value>,
    node_uuid: &str,
    node_name: Option<&str>,
) -> Result<Option<Vec<u8>>, ConfigDriveError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if s.starts_with("http://") || s.starts_with("https://") => Err(bad(
            "a config drive URL is fetched by a deploy ramdisk's agent, and a diskless (ramdisk) instance has none: \
             give the image (gzipped, base64) or an object with meta_data/user_data/network_data/vendor_data",
        )),
        Some(Value::String(s)) => {
            check_encoded(s)?;
            let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let packed = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|e| bad(format!("not base64: {e}")))?;
            let mut image = Vec::new();
            flate2::read::GzDecoder::new(&packed[..])
                .take(MAX_SIZE + 1)
                .read_to_end(&mut image)
                .map_err(|e| bad(format!("the gzip data is damaged: {e}")))?;
            Ok(Some(image))
        }
        Some(Value::Object(o)) => Ok(Some(build(o, node_uuid, node_name)?)),
        Some(other) => Err(bad(format!(
            "a gzipped base64 image or an object with meta_data/user_data/network_data/vendor_data, not {}",
            kind(other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A caller-built image must be base64 of gzip data that unpacks to at
/// most [`MAX_SIZE`] bytes; anything else would only fail in the ramdisk,
/// minutes later, with a worse message.
pub fn check_encoded(s: &str) -> Result<(), ConfigDriveError> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| bad(format!("not base64 ({e}); give a URL, a gzipped base64 image or an object")))?;
    if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
        return Err(bad("base64, but not of gzip data: the image must be gzipped before it is encoded"));
    }
    let mut unpacked = 0u64;
    let mut reader = flate2::read::GzDecoder::new(&bytes[..]);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| bad(format!("the gzip data is damaged: {e}")))?;
        if n == 0 {
            break;
        }
        unpacked += n as u64;
        if unpacked > MAX_SIZE {
            return Err(bad(format!("unpacks to more than {} MiB", MAX_SIZE / (1024 * 1024))));
        }
    }
    if unpacked == 0 {
        return Err(bad("the image is empty"));
    }
    Ok(())
}

/// gzip, then base64: the form the agent (and Ironic's API) use.
pub fn encode(image: &[u8]) -> Result<String, ConfigDriveError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(image).and_then(|_| gz.flush()).map_err(|e| bad(format!("compressing: {e}")))?;
    let packed = gz.finish().map_err(|e| bad(format!("compressing: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(packed))
}

/// Builds the config drive image for the object form.
pub fn build(obj: &Map<String, Value>, node_uuid: &str, node_name: Option<&str>) -> Result<Vec<u8>, ConfigDriveError> {
    const KEYS: [&str; 4] = ["meta_data", "user_data", "network_data", "vendor_data"];
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(bad(format!("unknown key {k:?}; the keys are {}", KEYS.join(", "))));
    }
    let object = |key: &str| -> Result<Option<Map<String, Value>>, ConfigDriveError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(other) => Err(bad(format!("{key} must be an object, not {}", kind(other)))),
        }
    };
    let mut meta = object("meta_data")?.unwrap_or_default();
    meta.entry("uuid").or_insert_with(|| Value::String(node_uuid.to_string()));
    if let Some(name) = node_name {
        meta.entry("name").or_insert_with(|| Value::String(name.to_string()));
    }
    let json = |m: &Map<String, Value>| serde_json::to_vec(m).expect("JSON object serialises");
    let mut files = vec![InputEntry::file("meta_data.json", json(&meta))];
    match obj.get("user_data") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => files.push(InputEntry::file("user_data", s.clone().into_bytes())),
        Some(v @ (Value::Object(_) | Value::Array(_))) => {
            files.push(InputEntry::file("user_data", serde_json::to_vec(v).expect("serialises")))
        }
        Some(other) => {
            return Err(bad(format!("user_data must be a string, an object or a list, not {}", kind(other))));
        }
    }
    if let Some(n) = object("network_data")? {
        files.push(InputEntry::file("network_data.json", json(&n)));
    }
    if let Some(v) = object("vendor_data")? {
        files.push(InputEntry::file("vendor_data.json", json(&v)));
    }
    let entries = vec![InputEntry::directory("openstack", vec![InputEntry::directory("latest", files)])];
    let options = IsoFormatOptions {
        volume_name: LABEL.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("FERRIC".into()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures {
            filenames: BaseIsoLevel::Level2 { supports_lowercase: false, supports_rrip: false },
            long_filenames: false,
            joliet: Some(JolietLevel::Level3),
            rock_ridge: None,
            el_torito: None,
            hybrid_boot: None,
        },
        strict_charset: false,
    };
    let dir = std::env::temp_dir();
    let path = dir.join(format!(".ferric-configdrive-{:032x}", rand::random::<u128>()));
    let result = write_iso(&path, entries, options);
    let _ = std::fs::remove_file(&path);
    result
}

fn write_iso(path: &Path, entries: Vec<InputEntry>, options: IsoFormatOptions) -> Result<Vec<u8>, ConfigDriveError> {
    let err = |e: String| bad(format!("building the image: {e}"));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| err(format!("{}: {e}", path.display())))?;
    IsoImageWriter::create(file, InputTree::new(PathSeparator::ForwardSlash, entries), options)
        .map_err(|e| err(e.to_string()))?;
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(bad(format!("the image would be larger than {} MiB", MAX_SIZE / (1024 * 1024))));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn caller_built_images_must_be_gzipped_base64() {
        let good = encode(b"an image").unwrap();
        assert_eq!(for_agent(Some(&json!(good)), "u", None).unwrap(), Some(good.clone()));
        assert!(check_encoded("not base64 !!").unwrap_err().0.contains("not base64"));
        let plain = base64::engine::general_purpose::STANDARD.encode(b"an ungzipped image");
        assert!(check_encoded(&plain).unwrap_err().0.contains("not of gzip"));
        assert_eq!(for_agent(Some(&json!("https://x/cd.gz")), "u", None).unwrap().as_deref(), Some("https://x/cd.gz"));
        assert_eq!(for_agent(Some(&json!("")), "u", None).unwrap(), None);
        assert!(for_agent(Some(&json!(42)), "u", None).unwrap_err().0.contains("not a number"));
    }

    #[test]
    fn the_object_form_names_what_is_wrong() {
        let e = build(json!({"metadata": {}}).as_object().unwrap(), "u", None).unwrap_err();
        assert!(e.0.contains("unknown key \"metadata\""), "{e}");
        let e = build(json!({"network_data": "x"}).as_object().unwrap(), "u", None).unwrap_err();
        assert!(e.0.contains("network_data must be an object"), "{e}");
        let e = build(json!({"user_data": 3}).as_object().unwrap(), "u", None).unwrap_err();
        assert!(e.0.contains("user_data must be"), "{e}");
    }
}
