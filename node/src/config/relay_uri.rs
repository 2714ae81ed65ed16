//! What of a relay URI is secret: its token is only ever sent to a relay
//! pinned by its device ID, and never shown to anyone (announcements,
//! REST, logs). Checked when the configuration is loaded, applied when
//! joining.

use anyhow::{bail, Result};
use proto::relay::RelayUri;

/// The token to send when joining the relay of `uri`. A token is a
/// secret for one relay: without `id=` we cannot tell that relay from
/// whoever answers at its address (a spoofed DNS name, a hijacked IP), so
/// a token is only ever sent to a pinned relay.
pub fn join_token(uri: &RelayUri) -> Result<Option<String>> {
    match (&uri.token, uri.id) {
        (Some(_), None) => bail!(
            "a relay token is only sent to a relay pinned by its device ID: add ?id=<relay device ID>"
        ),
        (token, _) => Ok(token.clone()),
    }
}

/// What of a relay listen address may be shown to others: host, port and
/// `id` — never the token (nor other parameters, as Syncthing ≥ 1.23.3).
pub fn announceable(uri: &RelayUri) -> String {
    RelayUri::new(&uri.host, uri.port, uri.id).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announceable_never_carries_the_token() {
        let id = "LYXKCHX-VI3NYZR-ALCJBHF-WMZYSPK-QG6QJA3-MPFYMSO-U56GTUK-NA2MIAW";
        let uri: RelayUri =
            format!("relay://relay.site-a.example:22067/?id={id}&token=s3cret&pingInterval=1m0s")
                .parse()
                .unwrap();
        let shown = announceable(&uri);
        assert_eq!(
            shown,
            format!("relay://relay.site-a.example:22067/?id={id}")
        );
        assert!(!format!("{shown:?}").contains("s3cret"));
    }

    #[test]
    fn a_token_is_never_sent_to_an_unpinned_relay() {
        let unpinned: RelayUri = "relay://relay.example:22067/?token=s3cret".parse().unwrap();
        assert!(join_token(&unpinned).is_err());
        let id = "LYXKCHX-VI3NYZR-ALCJBHF-WMZYSPK-QG6QJA3-MPFYMSO-U56GTUK-NA2MIAW";
        let pinned: RelayUri = format!("relay://relay.example:22067/?id={id}&token=s3cret")
            .parse()
            .unwrap();
        assert_eq!(join_token(&pinned).unwrap().as_deref(), Some("s3cret"));
        let open: RelayUri = "relay://relay.example:22067/".parse().unwrap();
        assert_eq!(join_token(&open).unwrap(), None);
    }
}
