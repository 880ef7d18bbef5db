//! Policies and data from files: Rego modules, JSON or YAML data documents, and
//! OPA bundles (a gzipped tar with a `.manifest`, modules, and `data.json` or
//! `data.yaml` files placed under `data` at their directory's path). Every
//! reader is bounded; a path that climbs out of the bundle is refused.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Component, Path};

use serde_json::Value;

/// Largest file read (a module, a data document, or a file inside a bundle).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Most bytes a bundle may unpack to.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// Most entries in a bundle.
pub const MAX_BUNDLE_ENTRIES: usize = 10_000;

/// What the files give: modules by id, the merged data document, and the
/// bundles' revisions.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Module id (file name, or `bundle/path.rego`) → Rego.
    pub modules: BTreeMap<String, String>,
    /// The data document.
    pub data: Value,
    /// Each bundle's `.manifest` revision, by bundle file.
    pub revisions: BTreeMap<String, String>,
}

impl Loaded {
    /// Reads one file by its kind: `.rego`, `.json`, `.yaml`/`.yml`, or a bundle
    /// (`.tar.gz`, `.tgz`). Errors name the file (and the entry, in a bundle).
    pub fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let name = path.display().to_string();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            return self.add_bundle(path).map_err(|e| format!("{name}: {e}"));
        }
        let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let text = read_bounded(file, MAX_FILE_BYTES).map_err(|e| format!("{name}: {e}"))?;
        self.add_text(&name, &text).map_err(|e| format!("{name}: {e}"))
    }

    /// A module or data document named `name`, placed at `at` for data.
    fn add_named(&mut self, name: &str, text: &str, at: &[&str]) -> Result<(), String> {
        if name.ends_with(".rego") {
            self.modules.insert(name.to_owned(), text.to_owned());
            return Ok(());
        }
        let value: Value = if name.ends_with(".json") {
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            serde_yaml_ng::from_str(text).map_err(|e| format!("not YAML: {e}"))?
        } else {
            return Err("expected a .rego policy, a .json/.yaml data file or a .tar.gz bundle".into());
        };
        merge_at(&mut self.data, at, value)
    }

    fn add_text(&mut self, name: &str, text: &str) -> Result<(), String> {
        self.add_named(name, text, &[])
    }

    fn add_bundle(&mut self, path: &Path) -> Result<(), String> {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut unpacked = 0u64;
        let mut manifest = None;
        let entries = archive.entries().map_err(|e| format!("not a gzipped tar: {e}"))?;
        for (count, entry) in entries.enumerate() {
            if count >= MAX_BUNDLE_ENTRIES {
                return Err(format!("more than {MAX_BUNDLE_ENTRIES} entries"));
            }
            let entry = entry.map_err(|e| format!("not a gzipped tar: {e}"))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let entry_path = entry.path().map_err(|e| e.to_string())?.into_owned();
            let mut parts = Vec::new();
            for component in entry_path.components() {
                match component {
                    Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
                    Component::CurDir | Component::RootDir => {}
                    _ => return Err(format!("{}: climbs out of the bundle", entry_path.display())),
                }
            }
            let Some(file_name) = parts.last().cloned() else {
                continue;
            };
            let size = entry.header().size().map_err(|e| e.to_string())?;
            unpacked = unpacked.saturating_add(size);
            if size > MAX_FILE_BYTES || unpacked > MAX_BUNDLE_BYTES {
                return Err(format!(
                    "{}: the bundle unpacks to more than allowed",
                    entry_path.display()
                ));
            }
            let text =
                read_bounded(entry, MAX_FILE_BYTES).map_err(|e| format!("{}: {e}", entry_path.display()))?;
            let inner = parts.join("/");
            let dirs: Vec<&str> = parts[..parts.len() - 1].iter().map(String::as_str).collect();
            match file_name.as_str() {
                ".manifest" => {
                    let value: Value =
                        serde_json::from_str(&text).map_err(|e| format!(".manifest: not JSON: {e}"))?;
                    manifest = Some(value);
                }
                "data.json" | "data.yaml" | "data.yml" => self
                    .add_named(&file_name, &text, &dirs)
                    .map_err(|e| format!("{inner}: {e}"))?,
                name if name.ends_with(".rego") => {
                    self.modules.insert(format!("{}/{inner}", path.display()), text);
                }
                _ => {}
            }
        }
        let revision = manifest
            .as_ref()
            .and_then(|m| m.get("revision"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.revisions.insert(path.display().to_string(), revision);
        Ok(())
    }
}

/// Reads at most `limit` bytes of UTF-8 text.
fn read_bounded(reader: impl std::io::Read, limit: u64) -> Result<String, String> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes"));
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))
}

/// Merges `value` into `data` under the path `at`: objects merge key by key;
/// any other overlap is a conflict.
pub fn merge_at(data: &mut Value, at: &[&str], value: Value) -> Result<(), String> {
    if data.is_null() {
        *data = Value::Object(Default::default());
    }
    let mut node = data;
    for key in at {
        let Value::Object(object) = node else {
            return Err(format!("{key}: its parent is not an object"));
        };
        node = object
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    merge(node, value, &at.join("/"))
}

fn merge(into: &mut Value, value: Value, path: &str) -> Result<(), String> {
    match (into, value) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(&key) {
                    None => {
                        into.insert(key, value);
                    }
                    Some(existing) => merge(existing, value, &format!("{path}/{key}"))?,
                }
            }
            Ok(())
        }
        _ => Err(format!("data/{}: defined twice", path.trim_start_matches('/'))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use serde_json::json;

    use super::*;

    fn bundle(dir: &Path, entries: &[(&str, &str)]) -> std::path::PathBuf {
        let path = dir.join("bundle.tar.gz");
        let file = std::fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
        for (name, text) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, text.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn bundles_give_modules_data_at_their_paths_and_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = bundle(
            dir.path(),
            &[
                (".manifest", r#"{"revision": "r42", "roots": ["authz", "roles"]}"#),
                (
                    "authz/policy.rego",
                    "package authz\nallow if input.user in data.roles.admins\n",
                ),
                ("roles/data.json", r#"{"admins": ["alice"]}"#),
                ("data.json", r#"{"top": 1}"#),
                ("README.md", "ignored"),
            ],
        );
        let mut loaded = Loaded::default();
        loaded.add_file(&path).unwrap();
        assert_eq!(loaded.data, json!({"roles": {"admins": ["alice"]}, "top": 1}));
        assert_eq!(loaded.modules.len(), 1);
        assert_eq!(loaded.revisions.values().next().unwrap(), "r42");
    }

    #[test]
    fn bad_bundles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conflict = bundle(
            dir.path(),
            &[
                ("a/data.json", r#"{"x": 1}"#),
                ("data.json", r#"{"a": {"x": 2}}"#),
            ],
        );
        let e = Loaded::default().add_file(&conflict).unwrap_err();
        assert!(e.contains("defined twice"), "{e}");
        let garbage = dir.path().join("garbage.tar.gz");
        std::fs::write(&garbage, b"not gzip").unwrap();
        let e = Loaded::default().add_file(&garbage).unwrap_err();
        assert!(e.contains("garbage.tar.gz"), "{e}");
        let bad_json = bundle(dir.path(), &[("x/data.json", "{")]);
        let e = Loaded::default().add_file(&bad_json).unwrap_err();
        assert!(e.contains("x/data.json") && e.contains("not JSON"), "{e}");
    }
}
