//! JWT-SVID validation: every refusal has its own variant.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use slim_auth::jwt::{JWT_LEEWAY, JwtKey};
use slim_auth::{JwtBundles, JwtError, JwtSigner, SpiffeId, validate_jwt_svid};

/// A throwaway 2048-bit RSA key used only by these tests (ring cannot generate RSA keys).
const RSA_PEM: &str = include_str!("fixtures/rsa2048-test-only.pem");

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, aud: Value, exp_in: i64) -> Value {
    let now = now_secs() as i64;
    json!({ "sub": sub, "aud": aud, "iat": now, "exp": now + exp_in })
}

fn token(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn setup() -> (JwtSigner, JwtBundles) {
    let signer = JwtSigner::generate("example.org").unwrap();
    let bundles = signer.bundles();
    (signer, bundles)
}

#[test]
fn valid_token_returns_its_subject() {
    let (signer, bundles) = setup();
    let me = id("spiffe://example.org/client/a");
    let tok = signer
        .sign(&me, &["slim-node", "other"], Duration::from_secs(60))
        .unwrap();
    let got = validate_jwt_svid(&tok, "slim-node", &bundles, SystemTime::now()).unwrap();
    assert_eq!(got, me);
    // Either audience works.
    assert_eq!(
        validate_jwt_svid(&tok, "other", &bundles, SystemTime::now()).unwrap(),
        me
    );
}

#[test]
fn wrong_audience() {
    let (signer, bundles) = setup();
    let tok = signer
        .sign(
            &id("spiffe://example.org/a"),
            &["slim-node"],
            Duration::from_secs(60),
        )
        .unwrap();
    let err = validate_jwt_svid(&tok, "someone-else", &bundles, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::WrongAudience { .. }), "{err:?}");
    assert_eq!(err.reason_code(), "wrong_audience");
}

#[test]
fn expired() {
    let (signer, bundles) = setup();
    let tok = signer
        .sign(
            &id("spiffe://example.org/a"),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    // Valid now, expired once the leeway past exp is over.
    validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap();
    let later = SystemTime::now() + Duration::from_secs(61) + JWT_LEEWAY;
    let err = validate_jwt_svid(&tok, "aud", &bundles, later).unwrap_err();
    assert!(matches!(err, JwtError::Expired { .. }), "{err:?}");
    assert_eq!(err.reason_code(), "expired");

    // A token minted already expired.
    let stale = signer
        .sign_claims(&claims("spiffe://example.org/a", json!("aud"), -3600))
        .unwrap();
    let err = validate_jwt_svid(&stale, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::Expired { .. }), "{err:?}");
}

#[test]
fn not_yet_valid() {
    let (signer, bundles) = setup();
    let mut c = claims("spiffe://example.org/a", json!("aud"), 3600);
    c["nbf"] = json!(now_secs() + 600);
    let tok = signer.sign_claims(&c).unwrap();
    let err = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::NotYetValid { .. }), "{err:?}");
}

#[test]
fn tampered_payload_or_signature() {
    let (signer, bundles) = setup();
    let tok = signer
        .sign(
            &id("spiffe://example.org/a"),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let parts: Vec<&str> = tok.split('.').collect();

    // Swap in another subject, keep the signature.
    let forged_claims = claims("spiffe://example.org/admin", json!("aud"), 60);
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    let err = validate_jwt_svid(&forged, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
    assert_eq!(err.reason_code(), "bad_signature");

    // Flip one bit of the signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    let err = validate_jwt_svid(&flipped, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert_eq!(err, JwtError::BadSignature);

    // Signed by another key that claims the trusted kid.
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let header = json!({ "alg": "ES256", "kid": signer.kid(), "typ": "JWT" });
    let imposter = token(
        &header,
        &claims("spiffe://example.org/a", json!("aud"), 60),
        |m| kp.sign(&rng, m).unwrap().as_ref().to_vec(),
    );
    let err = validate_jwt_svid(&imposter, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
}

#[test]
fn unknown_kid_and_unknown_trust_domain() {
    let (_, bundles) = setup();
    let stranger = JwtSigner::generate("example.org").unwrap();
    let tok = stranger
        .sign(
            &id("spiffe://example.org/a"),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let err = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert_eq!(
        err,
        JwtError::UnknownKey {
            kid: stranger.kid().to_string()
        }
    );
    assert_eq!(err.reason_code(), "unknown_key");

    // A key trusted for another trust domain does not vouch for this one.
    let foreign = JwtSigner::generate("other.org").unwrap();
    let mut both = bundles.clone();
    both.merge(&foreign.bundles());
    let mut c = claims("spiffe://example.org/a", json!("aud"), 60);
    c["iss"] = json!("other.org");
    let tok = foreign.sign_claims(&c).unwrap();
    let err = validate_jwt_svid(&tok, "aud", &both, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::UnknownKey { .. }), "{err:?}");

    let tok = JwtSigner::generate("third.org")
        .unwrap()
        .sign(
            &id("spiffe://third.org/a"),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let err = validate_jwt_svid(&tok, "aud", &both, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, JwtError::UnknownTrustDomain { .. }),
        "{err:?}"
    );
}

#[test]
fn refused_algorithms() {
    let (signer, bundles) = setup();
    let c = claims("spiffe://example.org/a", json!("aud"), 60);
    for alg in ["none", "HS256", "HS384", "HS512", "ES512", "EdDSA"] {
        let header = json!({ "alg": alg, "kid": signer.kid() });
        let tok = token(&header, &c, |_| b"not-a-signature".to_vec());
        let err = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap_err();
        assert_eq!(err, JwtError::UnsupportedAlg(alg.to_string()));
        assert_eq!(err.reason_code(), "unsupported_alg");
    }
    // alg none with an empty signature part, the classic form.
    let header = json!({ "alg": "none" });
    let tok = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(c.to_string().as_bytes())
    );
    assert!(matches!(
        validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()),
        Err(JwtError::UnsupportedAlg(_))
    ));
    // An ES256 key cannot be used with ES384 (alg confusion).
    let header = json!({ "alg": "ES384", "kid": signer.kid() });
    let tok = token(&header, &c, |_| vec![0; 96]);
    let err = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn malformed_tokens() {
    let (signer, bundles) = setup();
    let good = signer
        .sign(
            &id("spiffe://example.org/a"),
            &["aud"],
            Duration::from_secs(60),
        )
        .unwrap();
    let cases = [
        String::new(),
        "a.b".to_string(),
        format!("{good}.extra"),
        "!!!.???.***".to_string(),
        format!("{}.e30.AA", b64(b"not json")),
    ];
    for tok in &cases {
        let err = validate_jwt_svid(tok, "aud", &bundles, SystemTime::now()).unwrap_err();
        assert!(matches!(err, JwtError::Malformed(_)), "{tok:?}: {err:?}");
        assert_eq!(err.reason_code(), "malformed");
    }
    // Missing kid.
    let header = json!({ "alg": "ES256" });
    let tok = token(
        &header,
        &claims("spiffe://example.org/a", json!("aud"), 60),
        |_| vec![0; 64],
    );
    assert!(matches!(
        validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()),
        Err(JwtError::Malformed(_))
    ));
    // Subject not a SPIFFE ID.
    let tok = signer
        .sign_claims(&claims("https://example.org/a", json!("aud"), 60))
        .unwrap();
    let err = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap_err();
    assert!(matches!(err, JwtError::BadSubject { .. }), "{err:?}");
    // Missing exp (signed, so only the claim check can refuse it).
    let tok = signer
        .sign_claims(&json!({ "sub": "spiffe://example.org/a", "aud": "aud" }))
        .unwrap();
    assert!(matches!(
        validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()),
        Err(JwtError::Malformed(_))
    ));
}

fn rsa_setup() -> (RsaKeyPair, JwtBundles, &'static str) {
    let der = PrivateKeyDer::from_pem_slice(RSA_PEM.as_bytes()).unwrap();
    let kp = RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
    let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
    let jwk = json!({
        "kty": "RSA",
        "kid": "rsa-1",
        "n": b64(&public.n),
        "e": b64(&public.e),
    });
    let mut bundles = JwtBundles::new();
    bundles
        .add_key("example.org", JwtKey::from_jwk(&jwk).unwrap())
        .unwrap();
    (kp, bundles, "rsa-1")
}

#[test]
fn rs256_and_ps256() {
    let (kp, bundles, kid) = rsa_setup();
    let rng = SystemRandom::new();
    let c = claims("spiffe://example.org/rsa", json!(["aud"]), 60);
    for (alg, enc) in [
        (
            "RS256",
            &signature::RSA_PKCS1_SHA256 as &dyn signature::RsaEncoding,
        ),
        ("RS512", &signature::RSA_PKCS1_SHA512),
        ("PS256", &signature::RSA_PSS_SHA256),
        ("PS384", &signature::RSA_PSS_SHA384),
    ] {
        let header = json!({ "alg": alg, "kid": kid, "typ": "JWT" });
        let tok = token(&header, &c, |m| {
            let mut sig = vec![0; kp.public().modulus_len()];
            kp.sign(enc, &rng, m, &mut sig).unwrap();
            sig
        });
        let got = validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now())
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(got, id("spiffe://example.org/rsa"));

        // Same token, claimed under another RSA algorithm: the signature does not verify.
        let other_alg = if alg.starts_with("RS") {
            "PS256"
        } else {
            "RS256"
        };
        let relabeled = {
            let parts: Vec<&str> = tok.split('.').collect();
            let h = json!({ "alg": other_alg, "kid": kid, "typ": "JWT" });
            format!(
                "{}.{}.{}",
                b64(h.to_string().as_bytes()),
                parts[1],
                parts[2]
            )
        };
        assert_eq!(
            validate_jwt_svid(&relabeled, "aud", &bundles, SystemTime::now()),
            Err(JwtError::BadSignature)
        );
    }
}

#[test]
fn es384() {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8.as_ref(),
        &rng,
    )
    .unwrap();
    let point = kp.public_key().as_ref();
    let (x, y) = point[1..].split_at(48);
    let jwk = json!({ "kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(x), "y": b64(y) });
    let bundles = JwtBundles::from_jwks(
        "example.org",
        json!({ "keys": [jwk] }).to_string().as_bytes(),
    )
    .unwrap();
    let header = json!({ "alg": "ES384", "kid": "p384" });
    let tok = token(
        &header,
        &claims("spiffe://example.org/p", json!("aud"), 60),
        |m| kp.sign(&rng, m).unwrap().as_ref().to_vec(),
    );
    assert_eq!(
        validate_jwt_svid(&tok, "aud", &bundles, SystemTime::now()).unwrap(),
        id("spiffe://example.org/p")
    );
}

#[test]
fn jwks_files() {
    let dir = tempfile::tempdir().unwrap();
    let signer = JwtSigner::load_or_init(dir.path(), "example.org").unwrap();
    // Reloading gives the same key.
    let again = JwtSigner::load_or_init(dir.path(), "example.org").unwrap();
    assert_eq!(signer.kid(), again.kid());
    let from_file = JwtBundles::from_json_file(
        &dir.path().join(slim_auth::jwt::JWT_BUNDLE_FILE),
        "example.org",
    )
    .unwrap();
    assert_eq!(from_file, signer.bundles());

    // The multi-trust-domain form.
    let foreign = JwtSigner::generate("other.org").unwrap();
    let doc = json!({
        "spiffe://example.org": serde_json::from_str::<Value>(&signer.jwks_json()).unwrap(),
        "other.org": serde_json::from_str::<Value>(&foreign.jwks_json()).unwrap(),
    });
    let both = JwtBundles::from_json(doc.to_string().as_bytes(), "ignored.org").unwrap();
    assert!(both.get("example.org", signer.kid()).is_some());
    assert!(both.get("other.org", foreign.kid()).is_some());
    let tok = foreign
        .sign(
            &id("spiffe://other.org/x"),
            &["aud"],
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(validate_jwt_svid(&tok, "aud", &both, SystemTime::now()).is_ok());
}
