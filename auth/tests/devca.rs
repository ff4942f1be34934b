use std::time::{Duration, SystemTime};

use rustls::pki_types::UnixTime;
use slim_auth::devca::{CA_CERT_FILE, CA_KEY_FILE};
use slim_auth::identity::{BUNDLE_FILE, CERT_FILE, KEY_FILE};
use slim_auth::{AuthError, DevCa, Identity, SpiffeId, TrustBundles, Usage, verify_svid};

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = DevCa::init(&ca_dir, "example.org").unwrap();
    assert_eq!(ca.trust_domain(), "example.org");
    assert!(ca_dir.join(CA_CERT_FILE).is_file());
    assert!(ca_dir.join(CA_KEY_FILE).is_file());
    #[cfg(unix)]
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);

    let pem = std::fs::read_to_string(ca_dir.join(CA_CERT_FILE)).unwrap();
    assert_eq!(pem, ca.ca_cert_pem());
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));

    let loaded = DevCa::load(&ca_dir).unwrap();
    assert_eq!(loaded.trust_domain(), "example.org");
    assert_eq!(loaded.ca_cert_der(), ca.ca_cert_der());

    // The loaded CA must actually hold the key: a leaf it issues verifies against
    // the bundle of the original CA.
    let leaf = loaded
        .issue(&id("spiffe://example.org/node"), DevCa::DEFAULT_TTL)
        .unwrap();
    let got = verify_svid(
        &leaf.cert_chain[0],
        &[],
        &ca.bundles(),
        UnixTime::now(),
        Usage::ServerAuth,
    )
    .unwrap();
    assert_eq!(got, id("spiffe://example.org/node"));
}

#[test]
fn init_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let first = DevCa::init(dir.path(), "example.org").unwrap();
    match DevCa::init(dir.path(), "example.org") {
        Err(AuthError::CaExists { existing }) => {
            assert!(existing.starts_with(dir.path()));
        }
        other => panic!("expected CaExists, got {other:?}"),
    }
    // The original CA is untouched.
    assert_eq!(
        DevCa::load(dir.path()).unwrap().ca_cert_der(),
        first.ca_cert_der()
    );

    // A stray key alone is also an existing CA.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::write(dir2.path().join(CA_KEY_FILE), b"x").unwrap();
    assert!(matches!(
        DevCa::init(dir2.path(), "example.org"),
        Err(AuthError::CaExists { .. })
    ));
}

#[test]
fn load_reports_missing_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    match DevCa::load(dir.path()) {
        Err(AuthError::MissingFile { path, .. }) => {
            assert_eq!(path, dir.path().join(CA_CERT_FILE))
        }
        other => panic!("expected MissingFile, got {other:?}"),
    }

    // Key from a different CA.
    DevCa::init(dir.path(), "example.org").unwrap();
    let other = tempfile::tempdir().unwrap();
    DevCa::init(other.path(), "example.org").unwrap();
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    match DevCa::load(dir.path()) {
        Err(AuthError::BadFile { path, reason }) => {
            assert_eq!(path, dir.path().join(CA_KEY_FILE));
            assert!(reason.contains("does not match"), "{reason}");
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
}

#[test]
fn init_rejects_invalid_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        DevCa::init(dir.path(), "Example.org"),
        Err(AuthError::InvalidId(_))
    ));
    assert!(!dir.path().join(CA_CERT_FILE).exists());
}

#[test]
fn issue_refuses_foreign_trust_domain_and_bad_ttl() {
    let ca = DevCa::generate("example.org").unwrap();
    match ca.issue(&id("spiffe://other.org/x"), DevCa::DEFAULT_TTL) {
        Err(AuthError::TrustDomainMismatch {
            id: got,
            ca_trust_domain,
        }) => {
            assert_eq!(got, id("spiffe://other.org/x"));
            assert_eq!(ca_trust_domain, "example.org");
        }
        other => panic!("expected TrustDomainMismatch, got {other:?}"),
    }
    assert!(matches!(
        ca.issue(&id("spiffe://example.org/x"), Duration::ZERO),
        Err(AuthError::InvalidTtl { .. })
    ));
    assert!(matches!(
        ca.issue(
            &id("spiffe://example.org/x"),
            Duration::from_secs(100 * 365 * 24 * 3600)
        ),
        Err(AuthError::InvalidTtl { .. })
    ));
}

#[test]
fn issued_leaf_has_svid_shape() {
    use x509_parser::prelude::*;
    let ca = DevCa::generate("example.org").unwrap();
    let before = SystemTime::now();
    let ident = ca
        .issue(&id("spiffe://example.org/ns/a"), Duration::from_secs(600))
        .unwrap();
    assert_eq!(ident.spiffe_id, id("spiffe://example.org/ns/a"));
    assert_eq!(ident.cert_chain.len(), 1);

    let (_, cert) = X509Certificate::from_der(&ident.cert_chain[0]).unwrap();
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://example.org/ns/a"]);
    assert_eq!(sans.value.general_names.len(), 1);
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );

    let now = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        (now - 62..=now - 58).contains(&nb),
        "notBefore {nb} vs now {now}"
    );
    assert!(
        (now + 598..=now + 602).contains(&na),
        "notAfter {na} vs now {now}"
    );
    assert_eq!(
        ident
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        na
    );

    // Serials are random, not derived from the key or the name.
    let other = ca
        .issue(&id("spiffe://example.org/ns/a"), Duration::from_secs(600))
        .unwrap();
    let (_, other_cert) = X509Certificate::from_der(&other.cert_chain[0]).unwrap();
    assert_ne!(cert.raw_serial(), other_cert.raw_serial());
    assert!(cert.raw_serial().len() >= 8);
}

#[test]
fn issue_to_dir_and_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::init(&dir.path().join("ca"), "example.org").unwrap();
    let out = dir.path().join("svid");
    let node = id("spiffe://example.org/node/1");
    let issued = ca.issue_to_dir(&node, DevCa::DEFAULT_TTL, &out).unwrap();

    for f in [CERT_FILE, KEY_FILE, BUNDLE_FILE] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
    let key_pem = std::fs::read_to_string(out.join(KEY_FILE)).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 expected"
    );
    assert_eq!(
        std::fs::read_to_string(out.join(BUNDLE_FILE)).unwrap(),
        ca.ca_cert_pem()
    );

    let loaded = Identity::from_files(&out).unwrap();
    assert_eq!(loaded.spiffe_id, node);
    assert_eq!(loaded.cert_chain, issued.cert_chain);
    assert_eq!(loaded.key.secret_der(), issued.key.secret_der());
    assert_eq!(loaded.not_after, issued.not_after);
    assert_eq!(
        loaded.bundles.get("example.org").unwrap(),
        &[ca.ca_cert_der()][..]
    );
    assert_eq!(
        loaded.bundles.trust_domains().collect::<Vec<_>>(),
        ["example.org"]
    );
    loaded.check(UnixTime::now()).unwrap();

    // Re-issuing into the same directory replaces the files (rotation).
    let again = ca.issue_to_dir(&node, DevCa::DEFAULT_TTL, &out).unwrap();
    assert_ne!(again.cert_chain, issued.cert_chain);
    assert_eq!(
        Identity::from_files(&out).unwrap().cert_chain,
        again.cert_chain
    );
}

#[test]
fn from_files_names_the_missing_or_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("example.org").unwrap();
    let out = dir.path();
    ca.issue_to_dir(&id("spiffe://example.org/n"), DevCa::DEFAULT_TTL, out)
        .unwrap();

    std::fs::remove_file(out.join(KEY_FILE)).unwrap();
    let err = Identity::from_files(out).unwrap_err();
    match &err {
        AuthError::MissingFile { path, .. } => assert_eq!(path, &out.join(KEY_FILE)),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    assert!(err.to_string().contains(KEY_FILE), "{err}");

    // A key from another SVID.
    let other = tempfile::tempdir().unwrap();
    ca.issue_to_dir(
        &id("spiffe://example.org/m"),
        DevCa::DEFAULT_TTL,
        other.path(),
    )
    .unwrap();
    std::fs::copy(other.path().join(KEY_FILE), out.join(KEY_FILE)).unwrap();
    match Identity::from_files(out) {
        Err(AuthError::BadFile { path, reason }) => {
            assert_eq!(path, out.join(KEY_FILE));
            assert!(reason.contains("does not match"), "{reason}");
        }
        other => panic!("expected BadFile for the key, got {other:?}"),
    }

    // A bundle from another CA of the same trust domain.
    ca.issue_to_dir(&id("spiffe://example.org/n"), DevCa::DEFAULT_TTL, out)
        .unwrap();
    let impostor = DevCa::generate("example.org").unwrap();
    std::fs::write(out.join(BUNDLE_FILE), impostor.ca_cert_pem()).unwrap();
    match Identity::from_files(out) {
        Err(AuthError::BadFile { path, reason }) => {
            assert_eq!(path, out.join(CERT_FILE));
            assert!(reason.contains("trust bundle"), "{reason}");
        }
        other => panic!("expected BadFile for the cert, got {other:?}"),
    }

    // Garbage certificate file.
    std::fs::write(out.join(CERT_FILE), b"not pem").unwrap();
    match Identity::from_files(out) {
        Err(AuthError::BadFile { path, .. }) => assert_eq!(path, out.join(CERT_FILE)),
        other => panic!("expected BadFile for the cert, got {other:?}"),
    }
}

#[test]
fn bundles_from_pem_file_cas_by_spiffe_uri() {
    let a = DevCa::generate("a.org").unwrap();
    let b = DevCa::generate("b.org").unwrap();
    let pem = format!("{}{}", a.ca_cert_pem(), b.ca_cert_pem());
    let bundles = TrustBundles::from_pem("a.org", pem.as_bytes()).unwrap();
    assert_eq!(
        bundles.trust_domains().collect::<Vec<_>>(),
        ["a.org", "b.org"]
    );
    assert_eq!(bundles.get("a.org").unwrap(), &[a.ca_cert_der()][..]);
    assert_eq!(bundles.get("b.org").unwrap(), &[b.ca_cert_der()][..]);
    assert!(bundles.get("c.org").is_none());

    // A CA without a SPIFFE URI SAN belongs to our own trust domain.
    let plain = rcgen_plain_ca_pem();
    let bundles = TrustBundles::from_pem("own.org", plain.as_bytes()).unwrap();
    assert_eq!(bundles.trust_domains().collect::<Vec<_>>(), ["own.org"]);

    assert!(matches!(
        TrustBundles::from_pem("own.org", b"nothing here"),
        Err(AuthError::Bundle(_))
    ));
    assert!(matches!(
        TrustBundles::from_pem("Bad", a.ca_cert_pem().as_bytes()),
        Err(AuthError::InvalidId(_))
    ));
}

fn rcgen_plain_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
