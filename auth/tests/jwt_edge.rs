//! JWT-SVID edge cases beyond the basic refusals: critical extensions,
//! repeated JSON keys, `iat` in the future, and the expiry a validated token
//! hands to the connection it authenticates.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use slim_auth::jwt::JWT_LEEWAY;
use slim_auth::{JwtBundles, JwtError, JwtSigner, JwtSvid, validate_jwt_svid};

const AUD: &str = "spiffe://example.org/node";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn setup() -> (JwtSigner, JwtBundles) {
    let signer = JwtSigner::generate("example.org").unwrap();
    let bundles = signer.bundles();
    (signer, bundles)
}

fn header(signer: &JwtSigner) -> String {
    format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, signer.kid())
}

fn payload(sub: &str) -> String {
    let now = now_secs();
    format!(
        r#"{{"sub":"{sub}","aud":"{AUD}","iat":{now},"exp":{}}}"#,
        now + 300
    )
}

fn check(tok: &str, bundles: &JwtBundles) -> Result<slim_auth::SpiffeId, JwtError> {
    validate_jwt_svid(tok, AUD, bundles, SystemTime::now())
}

#[test]
fn hand_written_json_validates_when_well_formed() {
    // The control for the tests below: the raw signer itself is not what refuses.
    let (signer, bundles) = setup();
    let tok = signer
        .sign_raw(&header(&signer), &payload("spiffe://example.org/good"))
        .unwrap();
    assert_eq!(
        check(&tok, &bundles).unwrap().as_str(),
        "spiffe://example.org/good"
    );
}

#[test]
fn crit_header_is_refused() {
    let (signer, bundles) = setup();
    for crit in [
        r#"["exp"]"#,
        r#"["b64"]"#,
        r#"["x-unknown-extension"]"#,
        "[]",
        r#""b64""#,
    ] {
        let h = format!(
            r#"{{"alg":"ES256","kid":"{}","typ":"JWT","crit":{crit},"x-unknown-extension":true}}"#,
            signer.kid()
        );
        let tok = signer
            .sign_raw(&h, &payload("spiffe://example.org/good"))
            .unwrap();
        let err = check(&tok, &bundles).unwrap_err();
        assert!(
            matches!(err, JwtError::UnsupportedCritical(_)),
            "crit {crit}: {err:?}"
        );
        assert_eq!(err.reason_code(), "unsupported_crit");
    }
}

#[test]
fn repeated_claim_is_refused_not_last_wins() {
    let (signer, bundles) = setup();
    let now = now_secs();
    let p = format!(
        r#"{{"sub":"spiffe://example.org/good","aud":"{AUD}","exp":{},"sub":"spiffe://example.org/admin"}}"#,
        now + 300
    );
    let tok = signer.sign_raw(&header(&signer), &p).unwrap();
    let err = check(&tok, &bundles).unwrap_err();
    assert_eq!(
        err,
        JwtError::DuplicateKey {
            part: "payload",
            key: "sub".into()
        }
    );
    assert_eq!(err.reason_code(), "duplicate_key");

    // A repeated exp (a later one extending the token's life) as well.
    let p = format!(
        r#"{{"sub":"spiffe://example.org/good","aud":"{AUD}","exp":{},"exp":{}}}"#,
        now + 300,
        now + 10 * 365 * 86400
    );
    let tok = signer.sign_raw(&header(&signer), &p).unwrap();
    assert!(matches!(
        check(&tok, &bundles),
        Err(JwtError::DuplicateKey {
            part: "payload",
            ..
        })
    ));

    // Nested objects count too: a claim's object with a repeated member.
    let p = format!(
        r#"{{"sub":"spiffe://example.org/good","aud":"{AUD}","exp":{},"ext":[{{"role":"user","role":"admin"}}]}}"#,
        now + 300
    );
    let tok = signer.sign_raw(&header(&signer), &p).unwrap();
    assert_eq!(
        check(&tok, &bundles),
        Err(JwtError::DuplicateKey {
            part: "payload",
            key: "role".into()
        })
    );
}

#[test]
fn repeated_header_key_is_refused() {
    let (signer, bundles) = setup();
    for h in [
        format!(
            r#"{{"alg":"HS256","kid":"{}","alg":"ES256"}}"#,
            signer.kid()
        ),
        format!(
            r#"{{"alg":"ES256","kid":"other","kid":"{}"}}"#,
            signer.kid()
        ),
    ] {
        let tok = signer
            .sign_raw(&h, &payload("spiffe://example.org/good"))
            .unwrap();
        let err = check(&tok, &bundles).unwrap_err();
        assert!(
            matches!(err, JwtError::DuplicateKey { part: "header", .. }),
            "{h}: {err:?}"
        );
    }
}

#[test]
fn iat_in_the_future_is_refused_beyond_the_leeway() {
    let (signer, bundles) = setup();
    let now = now_secs();
    let with_iat = |iat: u64| {
        let p = format!(
            r#"{{"sub":"spiffe://example.org/good","aud":"{AUD}","iat":{iat},"exp":{}}}"#,
            now + 20 * 365 * 86400
        );
        signer.sign_raw(&header(&signer), &p).unwrap()
    };
    let ten_years = now + 10 * 365 * 86400;
    let err = check(&with_iat(ten_years), &bundles).unwrap_err();
    assert!(
        matches!(err, JwtError::IssuedInFuture { iat, .. } if iat == ten_years),
        "{err:?}"
    );
    assert_eq!(err.reason_code(), "iat_in_future");
    // Just past the leeway: refused; within it (clock skew): accepted.
    let past_leeway = now + JWT_LEEWAY.as_secs() + 5;
    assert!(matches!(
        check(&with_iat(past_leeway), &bundles),
        Err(JwtError::IssuedInFuture { .. })
    ));
    let within = now + JWT_LEEWAY.as_secs() / 2;
    assert!(check(&with_iat(within), &bundles).is_ok());
}

#[test]
fn validated_token_reports_its_expiry() {
    let (signer, bundles) = setup();
    let id = slim_auth::SpiffeId::parse("spiffe://example.org/exp").unwrap();
    let before = now_secs();
    let tok = signer.sign(&id, &[AUD], Duration::from_secs(120)).unwrap();
    let svid = JwtSvid::validate(&tok, AUD, &bundles, SystemTime::now()).unwrap();
    assert_eq!(svid.spiffe_id, id);
    assert_eq!(svid.audience, vec![AUD.to_string()]);
    let exp = svid.expiry.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(
        (before + 120..=now_secs() + 120).contains(&exp),
        "exp {exp} not ~120 s after {before}"
    );
}

#[test]
fn a_signature_that_is_not_base64url_is_malformed_and_said_plainly() {
    let (signer, bundles) = setup();
    let tok = signer
        .sign_raw(&header(&signer), &payload("spiffe://example.org/good"))
        .unwrap();
    let (input, _) = tok.rsplit_once('.').unwrap();
    let err = check(&format!("{input}.!!notbase64!!"), &bundles).unwrap_err();
    assert!(matches!(err, JwtError::Malformed(_)), "{err:?}");
    // The reason is text, not a Rust debug dump.
    assert!(!err.to_string().contains("Base64("), "{err}");
}
