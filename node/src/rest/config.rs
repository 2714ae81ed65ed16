//! `/rest/config/*` and the older `/rest/system/config`: the
//! configuration as Syncthing shapes it.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::Value;

use super::http_util::{bad, internal, not_found, ok, text, to_json, Answer, Call};
use crate::config::{Config, DeviceConfig, FolderConfig, Options};
use crate::model::Node;

/// Overlays the keys of `patch` on `base` (one level, like Syncthing's PATCH).
fn merge(base: &mut Value, patch: Value) {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        for (k, v) in p {
            b.insert(k, v);
        }
    }
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

/// Applies a configuration change (checked, saved, then in effect).
/// A change that does not validate is a 400 and nothing is saved.
fn change_config(
    node: &Arc<Node>,
    change: impl FnOnce(&mut Config) -> anyhow::Result<()>,
) -> Answer {
    match node.update_config(change) {
        Ok(_) => match crate::serve::apply_config(node) {
            Ok(()) => Ok(ok()),
            Err(e) => Err(internal(format!("{e:#}"))),
        },
        Err(e) => Err(bad(format!("{e:#}"))),
    }
}

pub async fn route(c: &Call) -> Answer {
    let node = &c.node;
    let config = node.config();
    let rest = c.path.trim_start_matches("/rest/config/");
    let (section, item) = rest.split_once('/').unwrap_or((rest, ""));
    let item = item.to_string();
    match (section, item.as_str()) {
        ("options", "") => {
            c.allow(&[Method::GET, Method::PUT, Method::PATCH])?;
            if c.method == Method::GET {
                return Ok(to_json(&config.options));
            }
            let body = c.json()?;
            change_config(node, |cf| {
                let mut v = serde_json::to_value(&cf.options)?;
                merge(&mut v, body);
                cf.options = from_value::<Options>(v)?;
                Ok(())
            })
        }
        ("devices", "") => {
            c.allow(&[Method::GET, Method::POST, Method::PUT])?;
            if c.method == Method::GET {
                return Ok(to_json(&config.devices));
            }
            let body = c.json()?;
            change_config(node, |cf| {
                let list = match body {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                for v in list {
                    let d: DeviceConfig = from_value(v)?;
                    let id = d.id()?;
                    cf.devices.retain(|x| x.id().ok() != Some(id));
                    cf.devices.push(d);
                }
                Ok(())
            })
        }
        ("devices", id) => {
            c.allow(&[Method::GET, Method::DELETE])?;
            if c.method == Method::GET {
                return match config.devices.iter().find(|d| d.device_id == id) {
                    Some(d) => Ok(to_json(d)),
                    None => Err(text(StatusCode::NOT_FOUND, "no such device")),
                };
            }
            change_config(node, |cf| {
                cf.devices.retain(|x| x.device_id != item);
                Ok(())
            })
        }
        ("folders", "") => {
            c.allow(&[Method::GET, Method::POST, Method::PUT])?;
            if c.method == Method::GET {
                return Ok(to_json(&config.folders));
            }
            let body = c.json()?;
            change_config(node, |cf| {
                let list = match body {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                for v in list {
                    let f: FolderConfig = from_value(v)?;
                    cf.folders.retain(|x| x.id != f.id);
                    cf.folders.push(f);
                }
                Ok(())
            })
        }
        ("folders", id) => {
            c.allow(&[Method::GET, Method::PUT, Method::PATCH, Method::DELETE])?;
            if c.method == Method::DELETE {
                return change_config(node, |cf| {
                    cf.folders.retain(|f| f.id != item);
                    Ok(())
                });
            }
            let Some(current) = config.folders.iter().find(|f| f.id == id) else {
                return Err(text(StatusCode::NOT_FOUND, "no such folder"));
            };
            if c.method == Method::GET {
                return Ok(to_json(current));
            }
            let body = c.json()?;
            change_config(node, move |cf| {
                for f in cf.folders.iter_mut().filter(|f| f.id == item) {
                    let mut v = serde_json::to_value(&*f)?;
                    merge(&mut v, body.clone());
                    let mut next: FolderConfig = from_value(v)?;
                    next.id = item.clone();
                    *f = next;
                }
                Ok(())
            })
        }
        ("restart-required", "") => {
            c.allow(&[Method::GET])?;
            Ok(super::http_util::json(
                &serde_json::json!({"requiresRestart": false}),
            ))
        }
        _ => Err(not_found()),
    }
}
