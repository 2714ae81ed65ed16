//! A FileInfo as Syncthing's REST API shows it (`/rest/db/file`, and the
//! entries of `/rest/db/need` and friends).

use serde_json::{json, Value};

use super::http_util::time_fmt;

/// A FileInfo as Syncthing's `/rest/db/file` shows it.
pub fn file_json(f: &proto::bep::wire::FileInfo) -> Value {
    let version: Vec<String> = f
        .version
        .iter()
        .flat_map(|v| v.counters.iter())
        .map(|c| format!("{}:{}", proto::ShortId(c.id), c.value))
        .collect();
    json!({
        "name": f.name,
        "type": match f.r#type { 1 => "FILE_INFO_TYPE_DIRECTORY", 4 => "FILE_INFO_TYPE_SYMLINK", _ => "FILE_INFO_TYPE_FILE" },
        "size": f.size, "permissions": format!("0{:o}", f.permissions), "deleted": f.deleted,
        "invalid": f.invalid, "ignored": false, "mustRescan": false,
        "noPermissions": f.no_permissions, "sequence": f.sequence,
        "modified": time_fmt(f.modified_s), "modifiedBy": proto::ShortId(f.modified_by).to_string(),
        "numBlocks": f.blocks.len(), "version": version,
        "localFlags": 0,
    })
}
