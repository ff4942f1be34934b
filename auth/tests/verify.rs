use rustls::pki_types::{CertificateDer, UnixTime};
use slim_auth::devca::testing;
use slim_auth::{
    DevCa, Identity, ServerMatch, SpiffeClientVerifier, SpiffeId, SpiffeServerVerifier, SvidError,
    TrustBundles, Usage, verify_svid,
};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

struct Fixture {
    ca: DevCa,
    bundles: TrustBundles,
    node: SpiffeId,
}

fn fixture() -> Fixture {
    let ca = DevCa::generate("example.org").unwrap();
    let bundles = ca.bundles();
    Fixture {
        ca,
        bundles,
        node: id("spiffe://example.org/node"),
    }
}

fn verify(ident: &Identity, bundles: &TrustBundles, usage: Usage) -> Result<SpiffeId, SvidError> {
    verify_svid(
        &ident.cert_chain[0],
        &ident.cert_chain[1..],
        bundles,
        UnixTime::now(),
        usage,
    )
}

#[test]
fn accepts_good_leaf_for_both_usages() {
    let f = fixture();
    let ident = f.ca.issue(&f.node, DevCa::DEFAULT_TTL).unwrap();
    for usage in [Usage::ClientAuth, Usage::ServerAuth] {
        assert_eq!(verify(&ident, &f.bundles, usage), Ok(f.node.clone()));
    }
}

#[test]
fn rejects_other_ca_with_same_trust_domain_name() {
    let f = fixture();
    let impostor = DevCa::generate("example.org").unwrap();
    let ident = impostor.issue(&f.node, DevCa::DEFAULT_TTL).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ClientAuth).unwrap_err();
    assert_eq!(
        err,
        SvidError::UntrustedIssuer {
            td: "example.org".into(),
            id: f.node.to_string(),
        }
    );
    assert_eq!(err.reason_code(), "untrusted_issuer");
}

#[test]
fn rejects_unknown_trust_domain() {
    let f = fixture();
    let other = DevCa::generate("other.org").unwrap();
    let ident = other
        .issue(&id("spiffe://other.org/node"), DevCa::DEFAULT_TTL)
        .unwrap();
    let err = verify(&ident, &f.bundles, Usage::ClientAuth).unwrap_err();
    assert_eq!(
        err,
        SvidError::UnknownTrustDomain {
            td: "other.org".into()
        }
    );
    assert_eq!(err.reason_code(), "unknown_trust_domain");

    // Federation: once other.org's bundle is added, it verifies.
    let mut federated = f.bundles.clone();
    federated.merge(&other.bundles());
    assert_eq!(
        verify(&ident, &federated, Usage::ClientAuth),
        Ok(id("spiffe://other.org/node"))
    );
}

#[test]
fn bundle_of_one_trust_domain_cannot_vouch_for_another() {
    // other.org's CA is trusted, but only for other.org: it must not be able to mint
    // example.org identities.
    let f = fixture();
    let other = DevCa::generate("other.org").unwrap();
    let mut bundles = f.bundles.clone();
    bundles.merge(&other.bundles());
    let forged = testing::issue_custom(&other, &f.node, &testing::LeafSpec::svid(&f.node)).unwrap();
    let err = verify(&forged, &bundles, Usage::ServerAuth).unwrap_err();
    assert!(
        matches!(err, SvidError::UntrustedIssuer { ref td, .. } if td == "example.org"),
        "{err:?}"
    );
}

#[test]
fn rejects_expired() {
    let f = fixture();
    let ident = testing::expired(&f.ca, &f.node).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ClientAuth).unwrap_err();
    assert!(
        matches!(err, SvidError::Expired { not_after, now } if now > not_after),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), "expired");
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn rejects_not_yet_valid() {
    let f = fixture();
    let ident = testing::not_yet_valid(&f.ca, &f.node).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ServerAuth).unwrap_err();
    assert!(
        matches!(err, SvidError::NotYetValid { not_before, now } if not_before > now),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), "not_yet_valid");
}

#[test]
fn rejects_ca_as_leaf() {
    let f = fixture();
    let ident = testing::ca_as_leaf(&f.ca, &f.node).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ClientAuth).unwrap_err();
    assert_eq!(err, SvidError::CaAsLeaf);
    assert_eq!(err.reason_code(), "ca_as_leaf");

    // The CA's own certificate presented as a leaf.
    let err = verify_svid(
        &f.ca.ca_cert_der(),
        &[],
        &f.bundles,
        UnixTime::now(),
        Usage::ServerAuth,
    )
    .unwrap_err();
    assert_eq!(err, SvidError::CaAsLeaf);
}

#[test]
fn rejects_two_uri_sans() {
    let f = fixture();
    let ident = testing::two_uri_sans(&f.ca, &f.node, &id("spiffe://example.org/admin")).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ClientAuth).unwrap_err();
    assert_eq!(err, SvidError::TwoUriSans { count: 2 });
    assert_eq!(err.reason_code(), "two_uri_sans");
}

#[test]
fn rejects_dns_only_san() {
    let f = fixture();
    let ident = testing::dns_only(&f.ca, &f.node, "node.example.org").unwrap();
    let err = verify(&ident, &f.bundles, Usage::ServerAuth).unwrap_err();
    assert_eq!(err, SvidError::NoUriSan);
    assert_eq!(err.reason_code(), "no_uri_san");
}

#[test]
fn rejects_non_spiffe_uri() {
    let f = fixture();
    let spec = testing::LeafSpec {
        uri_sans: vec!["https://example.org/node".into()],
        ..testing::LeafSpec::svid(&f.node)
    };
    let ident = testing::issue_custom(&f.ca, &f.node, &spec).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ServerAuth).unwrap_err();
    assert!(
        matches!(err, SvidError::NotSpiffe { ref uri, .. } if uri == "https://example.org/node"),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), "not_spiffe");
}

#[test]
fn rejects_bad_key_usage() {
    let f = fixture();
    let ident = testing::key_cert_sign_leaf(&f.ca, &f.node).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ServerAuth).unwrap_err();
    assert!(matches!(err, SvidError::BadKeyUsage(_)), "{err:?}");

    let spec = testing::LeafSpec {
        digital_signature: false,
        ..testing::LeafSpec::svid(&f.node)
    };
    let ident = testing::issue_custom(&f.ca, &f.node, &spec).unwrap();
    let err = verify(&ident, &f.bundles, Usage::ServerAuth).unwrap_err();
    assert!(matches!(err, SvidError::BadKeyUsage(_)), "{err:?}");
    assert_eq!(err.reason_code(), "bad_key_usage");
}

#[test]
fn rejects_wrong_extended_key_usage() {
    let f = fixture();
    let ident = testing::server_auth_only(&f.ca, &f.node).unwrap();
    assert_eq!(
        verify(&ident, &f.bundles, Usage::ServerAuth),
        Ok(f.node.clone())
    );
    assert_eq!(
        verify(&ident, &f.bundles, Usage::ClientAuth),
        Err(SvidError::WrongUsage {
            usage: Usage::ClientAuth
        })
    );
}

#[test]
fn rejects_tampered_signature() {
    let f = fixture();
    let ident = f.ca.issue(&f.node, DevCa::DEFAULT_TTL).unwrap();
    let mut der = ident.cert_chain[0].to_vec();
    // The last byte belongs to the signature value.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let err = verify_svid(
        &CertificateDer::from(der),
        &[],
        &f.bundles,
        UnixTime::now(),
        Usage::ServerAuth,
    )
    .unwrap_err();
    assert_eq!(err, SvidError::BadSignature);
}

#[test]
fn rejects_garbage() {
    let f = fixture();
    let err = verify_svid(
        &CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01, 0xff]),
        &[],
        &f.bundles,
        UnixTime::now(),
        Usage::ServerAuth,
    )
    .unwrap_err();
    assert!(matches!(err, SvidError::Malformed(_)), "{err:?}");
}

#[test]
fn client_verifier_applies_trust_domain_policy_and_sees_bundle_swaps() {
    let f = fixture();
    let other = DevCa::generate("other.org").unwrap();
    let mut bundles = f.bundles.clone();
    bundles.merge(&other.bundles());
    let verifier =
        SpiffeClientVerifier::from_bundles(bundles).with_allowed_trust_domains(["example.org"]);

    let good = f.ca.issue(&f.node, DevCa::DEFAULT_TTL).unwrap();
    assert_eq!(
        verifier.verify(&good.cert_chain[0], &[], UnixTime::now()),
        Ok(f.node.clone())
    );
    let foreign = other
        .issue(&id("spiffe://other.org/x"), DevCa::DEFAULT_TTL)
        .unwrap();
    let err = verifier
        .verify(&foreign.cert_chain[0], &[], UnixTime::now())
        .unwrap_err();
    assert_eq!(err.reason_code(), "wrong_trust_domain");

    // Rotation: swapping the shared bundles takes effect on the next verification.
    *verifier.bundles().write().unwrap() = TrustBundles::new();
    assert_eq!(
        verifier.verify(&good.cert_chain[0], &[], UnixTime::now()),
        Err(SvidError::UnknownTrustDomain {
            td: "example.org".into()
        })
    );
}

#[test]
fn server_verifier_matchers() {
    let f = fixture();
    let server = f.ca.issue(&f.node, DevCa::DEFAULT_TTL).unwrap();
    let leaf = &server.cert_chain[0];
    let check = |m: ServerMatch| {
        SpiffeServerVerifier::from_bundles(f.bundles.clone(), m).verify(leaf, &[], UnixTime::now())
    };
    assert_eq!(check(ServerMatch::Any), Ok(f.node.clone()));
    assert_eq!(
        check(ServerMatch::TrustDomain("example.org".into())),
        Ok(f.node.clone())
    );
    assert_eq!(
        check(ServerMatch::Exact(f.node.clone())),
        Ok(f.node.clone())
    );
    assert_eq!(
        check(ServerMatch::TrustDomain("other.org".into()))
            .unwrap_err()
            .reason_code(),
        "wrong_trust_domain"
    );
    assert_eq!(
        check(ServerMatch::Exact(id("spiffe://example.org/other"))),
        Err(SvidError::UnexpectedId {
            id: f.node.clone(),
            expected: id("spiffe://example.org/other")
        })
    );
}

#[test]
fn every_error_has_a_reason_and_code() {
    let errors = [
        SvidError::NoCertificate,
        SvidError::Malformed("x".into()),
        SvidError::NoUriSan,
        SvidError::TwoUriSans { count: 2 },
        SvidError::CaAsLeaf,
        SvidError::BadKeyUsage("x".into()),
        SvidError::UnknownTrustDomain { td: "t".into() },
        SvidError::Expired {
            not_after: 1,
            now: 2,
        },
        SvidError::NotYetValid {
            not_before: 2,
            now: 1,
        },
        SvidError::UntrustedIssuer {
            td: "t".into(),
            id: "spiffe://t/x".into(),
        },
        SvidError::BadSignature,
        SvidError::WrongUsage {
            usage: Usage::ClientAuth,
        },
        SvidError::Other("x".into()),
    ];
    let mut codes = std::collections::HashSet::new();
    for e in &errors {
        assert!(e.to_string().len() > 10, "{e:?}");
        let code = e.reason_code();
        assert!(
            code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{code}"
        );
        assert!(codes.insert(code), "duplicate code {code}");
    }
}
