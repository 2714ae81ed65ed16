//! A FileInfo as Syncthing's REST API shows it (`/rest/db/file`, and the
//! entries of `/rest/db/need` and friends).

use serde_json::{json, Value};

use crate::timefmt::time_fmt_nanos;

/// A FileInfo as Syncthing 2.x's `/rest/db/file` shows it (1.19.2's keys,
/// plus `blocksHash`, `previousBlocksHash` and `platform`).
pub fn file_json(f: &proto::bep::wire::FileInfo) -> Value {
    let version: Vec<String> = f
        .version
        .iter()
        .flat_map(|v| v.counters.iter())
        .map(|c| format!("{}:{}", proto::ShortId(c.id), c.value))
        .collect();
    // Go marshals a byte slice as base64 and an empty one as null.
    let bytes = |b: &[u8]| {
        if b.is_empty() {
            Value::Null
        } else {
            json!(data_encoding::BASE64.encode(b))
        }
    };
    json!({
        "name": f.name,
        "type": match f.r#type { 1 => "FILE_INFO_TYPE_DIRECTORY", 4 => "FILE_INFO_TYPE_SYMLINK", _ => "FILE_INFO_TYPE_FILE" },
        "size": f.size, "permissions": format!("0{:o}", f.permissions), "deleted": f.deleted,
        "invalid": f.invalid, "ignored": false, "mustRescan": false,
        "noPermissions": f.no_permissions, "sequence": f.sequence,
        "modified": time_fmt_nanos(f.modified_s, u32::try_from(f.modified_ns).unwrap_or(0)),
        "modifiedBy": proto::ShortId(f.modified_by).to_string(),
        "numBlocks": f.blocks.len(), "version": version,
        "localFlags": 0,
        "blocksHash": bytes(&f.blocks_hash),
        "previousBlocksHash": bytes(&f.previous_blocks_hash),
        // Ownership and extended attributes are not synced here: no
        // platform data, each entry null as in 2.x for a file without.
        "platform": {"Darwin": null, "FreeBSD": null, "Linux": null,
                     "NetBSD": null, "Unix": null, "Windows": null},
    })
}
