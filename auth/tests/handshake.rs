//! Full TLS 1.3 handshakes between rustls client and server connections, pumped
//! over in-memory buffers (no sockets).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use slim_auth::devca::testing;
use slim_auth::tls::{ALPN_SLIM, client_config, peer_spiffe_id, server_config};
use slim_auth::{DevCa, Identity, ServerMatch, SpiffeId, SvidError, svid_error};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[derive(Debug)]
enum Failure {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Moves TLS records both ways until neither side has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failure> {
    for _ in 0..100 {
        let mut progressed = false;
        while client.wants_write() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().map_err(Failure::Server)?;
        }
        while server.wants_write() {
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            if buf.is_empty() {
                break;
            }
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().map_err(Failure::Client)?;
        }
        if !progressed {
            return Ok(());
        }
    }
    panic!("handshake did not settle");
}

struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    result: Result<(), Failure>,
}

fn handshake(server_id: &Identity, client_id: &Identity, expect: ServerMatch) -> Outcome {
    let scfg = Arc::new(server_config(server_id, &[ALPN_SLIM]).unwrap());
    let ccfg = Arc::new(client_config(client_id, &[ALPN_SLIM], expect).unwrap());
    // The name is deliberately unrelated to any certificate: SPIFFE ignores it.
    let name = ServerName::try_from("does-not-matter.invalid").unwrap();
    let mut client = ClientConnection::new(ccfg, name).unwrap();
    let mut server = ServerConnection::new(scfg).unwrap();
    let result = pump(&mut client, &mut server);
    Outcome {
        client,
        server,
        result,
    }
}

fn server_rejection(outcome: &Outcome) -> &SvidError {
    match &outcome.result {
        Err(Failure::Server(e)) => {
            svid_error(e).unwrap_or_else(|| panic!("server error without SvidError: {e:?}"))
        }
        other => panic!("expected the server to reject the client, got {other:?}"),
    }
}

#[test]
fn good_client_is_accepted_and_identified() {
    let ca = DevCa::generate("example.org").unwrap();
    let server_id = ca
        .issue(&id("spiffe://example.org/node/server"), DevCa::DEFAULT_TTL)
        .unwrap();
    let client_id = ca
        .issue(&id("spiffe://example.org/client/alice"), DevCa::DEFAULT_TTL)
        .unwrap();

    let out = handshake(
        &server_id,
        &client_id,
        ServerMatch::Exact(server_id.spiffe_id.clone()),
    );
    out.result.unwrap();
    assert!(!out.client.is_handshaking());
    assert!(!out.server.is_handshaking());
    assert_eq!(out.server.alpn_protocol(), Some(ALPN_SLIM));
    assert_eq!(
        out.server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let client_chain = out.server.peer_certificates().expect("client certificate");
    assert_eq!(
        peer_spiffe_id(client_chain).unwrap(),
        id("spiffe://example.org/client/alice")
    );
    let server_chain = out.client.peer_certificates().expect("server certificate");
    assert_eq!(
        peer_spiffe_id(server_chain).unwrap(),
        id("spiffe://example.org/node/server")
    );
}

#[test]
fn client_from_another_ca_is_refused() {
    let ca = DevCa::generate("example.org").unwrap();
    let impostor_ca = DevCa::generate("example.org").unwrap();
    let server_id = ca
        .issue(&id("spiffe://example.org/node/server"), DevCa::DEFAULT_TTL)
        .unwrap();
    // Trusts the right server CA, so only the server side can object.
    let mut client_id = impostor_ca
        .issue(
            &id("spiffe://example.org/client/mallory"),
            DevCa::DEFAULT_TTL,
        )
        .unwrap();
    client_id.bundles = ca.bundles();

    let mut out = handshake(&server_id, &client_id, ServerMatch::Any);
    assert_eq!(
        server_rejection(&out),
        &SvidError::UntrustedIssuer {
            td: "example.org".into(),
            id: "spiffe://example.org/client/mallory".into(),
        }
    );
    assert!(out.server.peer_certificates().is_none());

    // The client learns of the refusal through the alert.
    let mut alert = Vec::new();
    while out.server.wants_write() {
        out.server.write_tls(&mut alert).unwrap();
    }
    let mut rd = &alert[..];
    while !rd.is_empty() {
        out.client.read_tls(&mut rd).unwrap();
    }
    match out.client.process_new_packets() {
        Err(rustls::Error::AlertReceived(_)) => {}
        other => panic!("expected an alert at the client, got {other:?}"),
    }
}

#[test]
fn defective_client_certificates_are_refused_with_reason() {
    let ca = DevCa::generate("example.org").unwrap();
    let server_id = ca
        .issue(&id("spiffe://example.org/node/server"), DevCa::DEFAULT_TTL)
        .unwrap();
    let who = id("spiffe://example.org/client/bob");
    let cases: Vec<(&str, Identity)> = vec![
        ("expired", testing::expired(&ca, &who).unwrap()),
        ("not_yet_valid", testing::not_yet_valid(&ca, &who).unwrap()),
        ("ca_as_leaf", testing::ca_as_leaf(&ca, &who).unwrap()),
        (
            "two_uri_sans",
            testing::two_uri_sans(&ca, &who, &id("spiffe://example.org/x")).unwrap(),
        ),
        (
            "no_uri_san",
            testing::dns_only(&ca, &who, "bob.example.org").unwrap(),
        ),
        ("wrong_usage", testing::server_auth_only(&ca, &who).unwrap()),
    ];
    for (code, client_id) in cases {
        let out = handshake(&server_id, &client_id, ServerMatch::Any);
        assert_eq!(server_rejection(&out).reason_code(), code);
    }
}

#[test]
fn client_refuses_unexpected_server() {
    let ca = DevCa::generate("example.org").unwrap();
    let server_id = ca
        .issue(&id("spiffe://example.org/node/evil"), DevCa::DEFAULT_TTL)
        .unwrap();
    let client_id = ca
        .issue(&id("spiffe://example.org/client/alice"), DevCa::DEFAULT_TTL)
        .unwrap();
    let out = handshake(
        &server_id,
        &client_id,
        ServerMatch::Exact(id("spiffe://example.org/node/good")),
    );
    match &out.result {
        Err(Failure::Client(e)) => assert_eq!(
            svid_error(e),
            Some(&SvidError::UnexpectedId {
                id: id("spiffe://example.org/node/evil"),
                expected: id("spiffe://example.org/node/good"),
            })
        ),
        other => panic!("expected the client to reject the server, got {other:?}"),
    }

    // A server from an untrusted CA is refused even with ServerMatch::Any.
    let rogue = DevCa::generate("example.org").unwrap();
    let rogue_server = rogue
        .issue(&id("spiffe://example.org/node/server"), DevCa::DEFAULT_TTL)
        .unwrap();
    let out = handshake(&rogue_server, &client_id, ServerMatch::Any);
    match &out.result {
        Err(Failure::Client(e)) => {
            assert_eq!(
                svid_error(e).map(SvidError::reason_code),
                Some("untrusted_issuer")
            )
        }
        other => panic!("expected the client to reject the server, got {other:?}"),
    }
}

#[test]
fn configs_are_tls13_only_with_quic_initial_suite() {
    let ca = DevCa::generate("example.org").unwrap();
    let ident = ca
        .issue(&id("spiffe://example.org/n"), DevCa::DEFAULT_TTL)
        .unwrap();
    let s = server_config(&ident, &[ALPN_SLIM]).unwrap();
    let c = client_config(&ident, &[ALPN_SLIM], ServerMatch::Any).unwrap();
    for provider in [s.crypto_provider(), c.crypto_provider()] {
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|cs| cs.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
    assert_eq!(s.alpn_protocols, vec![ALPN_SLIM.to_vec()]);
    assert_eq!(c.alpn_protocols, vec![ALPN_SLIM.to_vec()]);
    assert_eq!(s.send_tls13_tickets, 0);
}
