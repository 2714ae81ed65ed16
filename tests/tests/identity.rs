//! Identity and TLS against real Syncthing 1.19.2 (issue: foundation).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e::syncthing::{device_id_of_home, generate};
use e2e::{our_binary, wait};
use proto::tls::{self, alpn, ServerPin, Versions};
use proto::{DeviceId, Identity, KeyKind};

fn run_node(args: &[&str]) -> std::process::Output {
    Command::new(our_binary("node"))
        .args(args)
        .output()
        .expect("run node")
}

#[test]
fn certificate_from_syncthing_generate_has_the_same_device_id_here() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        let home = dir.path().join(format!("st{i}"));
        let printed = generate(&home);
        assert_eq!(device_id_of_home(&home), printed);

        // The library: the real key.pem (SEC1 "EC PRIVATE KEY") loads and
        // matches the certificate.
        let identity = Identity::load(&home.join("cert.pem"), &home.join("key.pem")).unwrap();
        assert_eq!(identity.device_id().to_string(), printed);
        assert_eq!(identity.common_name().as_deref(), Some("syncthing"));
        assert_eq!(printed.parse::<DeviceId>().unwrap(), identity.device_id());

        // The command line, both ways of naming the certificate.
        for args in [
            vec!["device-id", "--home", home.to_str().unwrap()],
            vec![
                "device-id",
                "--cert",
                home.join("cert.pem").to_str().unwrap().to_owned().leak(),
            ],
        ] {
            let out = run_node(&args);
            assert!(out.status.success(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), printed);
        }

        // `node generate` keeps an existing (migrated) identity as it is.
        let out = run_node(&["generate", "--home", home.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), printed);
        assert_eq!(device_id_of_home(&home), printed);
    }
}

#[test]
fn real_syncthing_loads_certificates_we_generate() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["ed25519", "ecdsa-p384"] {
        let home = dir.path().join(kind);
        let out = run_node(&[
            "generate",
            "--home",
            home.to_str().unwrap(),
            "--key-type",
            kind,
        ]);
        assert!(out.status.success(), "{out:?}");
        let ours = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(ours.len(), 63);
        assert_eq!(device_id_of_home(&home), ours, "{kind}");
    }
}

#[test]
fn node_device_id_rejects_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let out = run_node(&["device-id", "--cert", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let out = run_node(&["device-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert FILE or --home DIR"));
}

/// BEP Hello: magic, 16-bit length, protobuf {1: device_name, 2:
/// client_name, 3: client_version}.
fn hello(name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(1u8, name), (2, "e2e-test"), (3, "v0.0.0")] {
        body.push(field << 3 | 2);
        body.push(value.len() as u8);
        body.extend_from_slice(value.as_bytes());
    }
    let mut msg = 0x2EA7_D90Bu32.to_be_bytes().to_vec();
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

#[test]
fn real_syncthing_accepts_tls13_bep_from_our_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = e2e::syncthing::start_tcp(&dir.path().join("st"));
    assert!(
        wait::listening(port, Duration::from_secs(20)),
        "syncthing does not listen"
    );

    for kind in [KeyKind::Ed25519, KeyKind::EcdsaP384] {
        let ours = Identity::generate("syncthing", kind).unwrap();
        let config = tls::client_config(
            Some(&ours),
            &[alpn::BEP],
            ServerPin::Any,
            Versions::Tls13Only,
        )
        .unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), tls::server_name()).unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut stream = rustls::StreamOwned::new(conn, sock);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake with real syncthing");
        }
        assert_eq!(
            stream.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(stream.conn.alpn_protocol(), Some(alpn::BEP));
        let theirs = tls::peer_device_id(&stream.conn).expect("server certificate");
        assert_eq!(theirs.to_string(), node.id(), "{kind}");

        // Syncthing reads our Hello and sends its own; as we are not a
        // configured device it records us as pending, under the device ID it
        // derived from our certificate.
        stream.write_all(&hello(&format!("e2e-{kind}"))).unwrap();
        let mut head = [0u8; 6];
        stream.read_exact(&mut head).expect("syncthing's Hello");
        assert_eq!(head[..4], 0x2EA7_D90Bu32.to_be_bytes());
        let want = ours.device_id().to_string();
        let seen = wait::until(Duration::from_secs(20), Duration::from_millis(200), || {
            node.pending_devices().contains(&want).then_some(())
        });
        assert!(
            seen.is_some(),
            "syncthing did not record {want} as pending:\n{}",
            node.proc.log_tail(20)
        );
    }
    node.shutdown();
}

#[test]
fn real_syncthing_refuses_tls12() {
    let dir = tempfile::tempdir().unwrap();
    let (node, port) = e2e::syncthing::start_tcp(&dir.path().join("st"));
    assert!(wait::listening(port, Duration::from_secs(20)));
    let ours = Identity::generate("syncthing", KeyKind::EcdsaP384).unwrap();
    // Offer only 1.2, with the same verifier as our real configurations.
    let provider = tls::provider();
    let tls12 = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(tls::PeerCertVerifier::new(
            &provider,
            ServerPin::Any,
        )))
        .with_client_auth_cert(vec![ours.cert_der().clone()], ours.key_der())
        .unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(tls12), tls::server_name()).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn = conn;
    let mut failed = false;
    for _ in 0..10 {
        if conn.complete_io(&mut sock).is_err() {
            failed = true;
            break;
        }
        if !conn.is_handshaking() {
            break;
        }
    }
    assert!(failed, "syncthing 1.19.2 accepted TLS 1.2");
    node.shutdown();
}
