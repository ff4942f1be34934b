//! JWT-SVIDs (SPIFFE JWT-SVID spec): validation against JWT bundles, and a
//! development signer.
//!
//! X.509-SVIDs authenticate the hop (the TLS connection); a JWT-SVID authenticates
//! a workload to a party further away, through relays that terminate TLS. The
//! receiver validates the token with [`validate_jwt_svid`] against the JWT
//! bundles (trust domain → JWKS public keys) it got from the Workload API
//! (`FetchJWTBundles`), from a JWKS file, or from a [`JwtSigner`].
//!
//! Signatures are verified by the `jsonwebtoken` crate (9.x, on `ring`); the
//! checks around it (duplicate JSON keys, `crit`, key selection by trust
//! domain and `kid`, time claims against the caller's clock) are here.
//! Supported algorithms: ES256, ES384,
//! RS256, RS384, RS512, PS256, PS384, PS512. `none`, every `HS*` (a shared secret
//! is not a SPIFFE trust model) and ES512 (P-521 is not in `ring`) are refused
//! with [`JwtError::UnsupportedAlg`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use crate::id::{SpiffeId, TrustDomain};
use crate::{AuthError, files};

/// Clock-skew tolerance applied to `exp`, `nbf` and `iat` (a token issued up
/// to this far in the future is still accepted).
pub const JWT_LEEWAY: Duration = Duration::from_secs(30);

/// JWT signing key file written by [`JwtSigner::load_or_init`] (PKCS#8 PEM, mode 0600).
pub const JWT_KEY_FILE: &str = "jwt.key";
/// JWKS file written next to [`JWT_KEY_FILE`], and read by the files identity source.
pub const JWT_BUNDLE_FILE: &str = "jwt_bundle.json";

/// Why a JWT-SVID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a well-formed JWS compact token, or a required header/claim is missing
    /// or has the wrong type.
    #[error("malformed JWT-SVID: {0}")]
    Malformed(String),
    /// The header or the payload repeats a JSON key (parsers disagree on
    /// which one counts, so neither does).
    #[error("JWT-SVID {part} repeats the key {key:?}")]
    DuplicateKey {
        /// `header` or `payload`.
        part: &'static str,
        /// The repeated key.
        key: String,
    },
    /// The header has `crit`: it names extensions this validator does not
    /// implement (it implements none), so RFC 7515 §4.1.11 requires refusal.
    #[error("JWT-SVID header marks unsupported extensions as critical: {0:?}")]
    UnsupportedCritical(Vec<String>),
    /// The `alg` header names an algorithm this crate refuses or does not implement.
    #[error("unsupported JWT algorithm {0:?}")]
    UnsupportedAlg(String),
    /// `sub` is not a valid SPIFFE ID.
    #[error("JWT-SVID subject {sub:?} is not a valid SPIFFE ID: {reason}")]
    BadSubject {
        /// The `sub` claim as found.
        sub: String,
        /// Why it is not a SPIFFE ID.
        reason: String,
    },
    /// No JWT bundle for the subject's trust domain.
    #[error("no JWT bundle for trust domain {td:?}")]
    UnknownTrustDomain {
        /// The trust domain of `sub`.
        td: String,
    },
    /// The subject's trust domain bundle has no key with this `kid`.
    #[error("no key with kid {kid:?} in the JWT bundle of the subject's trust domain")]
    UnknownKey {
        /// The `kid` header.
        kid: String,
    },
    /// The key found for `kid` cannot verify this `alg` (e.g. an RSA key for ES256).
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyMismatch {
        /// The `kid` header.
        kid: String,
        /// The `alg` header.
        alg: String,
    },
    /// The signature does not verify under the key named by `kid`.
    #[error("JWT-SVID signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond [`JWT_LEEWAY`]).
    #[error("JWT-SVID expired: exp is unix time {exp}, now is {now}")]
    Expired {
        /// The `exp` claim.
        exp: u64,
        /// Validation time.
        now: u64,
    },
    /// `nbf` is in the future (beyond [`JWT_LEEWAY`]).
    #[error("JWT-SVID not yet valid: nbf is unix time {nbf}, now is {now}")]
    NotYetValid {
        /// The `nbf` claim.
        nbf: u64,
        /// Validation time.
        now: u64,
    },
    /// `iat` is further in the future than [`JWT_LEEWAY`]: a token cannot
    /// have been issued after it is checked (a mis-set issuer clock or a
    /// token minted to outlive its stated lifetime).
    #[error("JWT-SVID issued in the future: iat is unix time {iat}, now is {now}")]
    IssuedInFuture {
        /// The `iat` claim.
        iat: u64,
        /// Validation time.
        now: u64,
    },
    /// `aud` does not contain the expected audience.
    #[error("JWT-SVID audience {got:?} does not contain {expected:?}")]
    WrongAudience {
        /// The audience the validator required.
        expected: String,
        /// The `aud` claim.
        got: Vec<String>,
    },
}

impl JwtError {
    /// A short, stable snake_case label for metrics and logs.
    pub fn reason_code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::DuplicateKey { .. } => "duplicate_key",
            JwtError::UnsupportedCritical(_) => "unsupported_crit",
            JwtError::UnsupportedAlg(_) => "unsupported_alg",
            JwtError::BadSubject { .. } => "bad_subject",
            JwtError::UnknownTrustDomain { .. } => "unknown_trust_domain",
            JwtError::UnknownKey { .. } => "unknown_key",
            JwtError::KeyMismatch { .. } => "key_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired { .. } => "expired",
            JwtError::NotYetValid { .. } => "not_yet_valid",
            JwtError::IssuedInFuture { .. } => "iat_in_future",
            JwtError::WrongAudience { .. } => "wrong_audience",
        }
    }
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn unb64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("{what} is not unpadded base64url: {e}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    fn coord_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Uncompressed point `04 || x || y`.
    Ec { curve: EcCurve, point: Vec<u8> },
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// One public key of a JWT bundle.
#[derive(Clone)]
pub struct JwtKey {
    kid: String,
    alg: Option<String>,
    material: KeyMaterial,
    jwk: Value,
    /// The same key, as the signature checker takes it.
    decoding: DecodingKey,
}

impl PartialEq for JwtKey {
    fn eq(&self, other: &Self) -> bool {
        // `decoding` is derived from `material`.
        self.kid == other.kid
            && self.alg == other.alg
            && self.material == other.material
            && self.jwk == other.jwk
    }
}

impl Eq for JwtKey {}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kty = match &self.material {
            KeyMaterial::Ec { curve, .. } => format!("EC {curve:?}"),
            KeyMaterial::Rsa { n, .. } => format!("RSA {} bits", n.len() * 8),
        };
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("kty", &kty)
            .field("alg", &self.alg)
            .finish()
    }
}

impl JwtKey {
    /// Parses one JWK (RFC 7517) public key: `kty` EC (P-256, P-384) or RSA.
    pub fn from_jwk(jwk: &Value) -> Result<JwtKey, String> {
        let field = |name: &str| -> Result<&str, String> {
            jwk.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("JWK has no string {name:?}"))
        };
        let kid = field("kid")?.to_string();
        if kid.is_empty() {
            return Err("JWK has an empty \"kid\"".into());
        }
        let alg = jwk.get("alg").and_then(Value::as_str).map(str::to_string);
        let (material, decoding) = match field("kty")? {
            "EC" => {
                let curve = match field("crv")? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => return Err(format!("unsupported EC curve {other:?}")),
                };
                let x = unb64("x", field("x")?)?;
                let y = unb64("y", field("y")?)?;
                if x.len() != curve.coord_len() || y.len() != curve.coord_len() {
                    return Err(format!(
                        "EC coordinates have the wrong length for {curve:?}"
                    ));
                }
                let mut point = Vec::with_capacity(1 + 2 * x.len());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (
                    KeyMaterial::Ec { curve, point },
                    DecodingKey::from_ec_components(field("x")?, field("y")?)
                        .map_err(|e| format!("unusable EC key: {e}"))?,
                )
            }
            "RSA" => {
                let strip = |v: Vec<u8>| -> Vec<u8> {
                    let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                    v[start..].to_vec()
                };
                let n = strip(unb64("n", field("n")?)?);
                let e = strip(unb64("e", field("e")?)?);
                if n.len() < 256 {
                    return Err(format!(
                        "RSA modulus of {} bits is below the 2048-bit minimum",
                        n.len() * 8
                    ));
                }
                let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
                (KeyMaterial::Rsa { n, e }, decoding)
            }
            other => return Err(format!("unsupported key type {other:?}")),
        };
        Ok(JwtKey {
            kid,
            alg,
            material,
            jwk: jwk.clone(),
            decoding,
        })
    }

    /// The key ID.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK as parsed.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Refuses an `alg` this key cannot verify: another family or curve, or
    /// not the `alg` the JWK pins (algorithm confusion).
    fn check_alg(&self, alg: Algorithm) -> Result<(), JwtError> {
        let name = format!("{alg:?}");
        if self.alg.as_deref().is_some_and(|a| a != name) {
            return Err(self.mismatch(&name));
        }
        let fits = match (&self.material, alg) {
            (KeyMaterial::Ec { curve, .. }, Algorithm::ES256) => *curve == EcCurve::P256,
            (KeyMaterial::Ec { curve, .. }, Algorithm::ES384) => *curve == EcCurve::P384,
            (
                KeyMaterial::Rsa { .. },
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512,
            ) => true,
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(self.mismatch(&name))
        }
    }

    fn mismatch(&self, alg: &str) -> JwtError {
        JwtError::KeyMismatch {
            kid: self.kid.clone(),
            alg: alg.to_string(),
        }
    }
}

/// JWT bundles: per trust domain, the public keys (by `kid`) that sign its JWT-SVIDs.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JwtBundles {
    map: BTreeMap<String, BTreeMap<String, JwtKey>>,
}

impl fmt::Debug for JwtBundles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.map
                    .iter()
                    .map(|(td, keys)| (td, keys.keys().collect::<Vec<_>>())),
            )
            .finish()
    }
}

impl JwtBundles {
    /// No bundles: no JWT-SVID validates.
    pub fn new() -> Self {
        Self::default()
    }

    /// A bundle set holding `jwks` (an RFC 7517 JWK Set) for trust domain `td`.
    pub fn from_jwks(td: &str, jwks: &[u8]) -> Result<Self, AuthError> {
        let mut b = Self::new();
        b.set_jwks(td, jwks)?;
        Ok(b)
    }

    /// Replaces the keys of `td` with those of `jwks`; returns how many were taken.
    ///
    /// Keys marked `"use": "x509-svid"` (X.509 authorities in a SPIFFE bundle
    /// document) and keys of unsupported types are skipped with a log line; a key
    /// without `kid` is an error, since JWT-SVIDs select their key by `kid`.
    pub fn set_jwks(&mut self, td: &str, jwks: &[u8]) -> Result<usize, AuthError> {
        let td = TrustDomain::parse(td)?;
        let doc: Value = serde_json::from_slice(jwks)
            .map_err(|e| AuthError::Bundle(format!("JWKS for {td}: not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| AuthError::Bundle(format!("JWKS for {td}: no \"keys\" array")))?;
        let mut parsed = BTreeMap::new();
        for (i, jwk) in keys.iter().enumerate() {
            match jwk.get("use").and_then(Value::as_str) {
                None | Some("jwt-svid") | Some("sig") => {}
                Some(other) => {
                    tracing::debug!(trust_domain = %td, index = i, r#use = other, "skipping non-JWT key in JWKS");
                    continue;
                }
            }
            if jwk.get("kid").is_none() {
                return Err(AuthError::Bundle(format!(
                    "JWKS for {td}: key #{} has no \"kid\"",
                    i + 1
                )));
            }
            match JwtKey::from_jwk(jwk) {
                Ok(key) => {
                    parsed.insert(key.kid.clone(), key);
                }
                Err(reason) => {
                    tracing::warn!(trust_domain = %td, index = i, %reason, "skipping unusable JWT key");
                }
            }
        }
        let n = parsed.len();
        self.map.insert(td.as_str().to_string(), parsed);
        Ok(n)
    }

    /// Adds one key to `td`'s bundle (replacing a key with the same `kid`).
    pub fn add_key(&mut self, td: &str, key: JwtKey) -> Result<(), AuthError> {
        let td = TrustDomain::parse(td)?;
        self.map
            .entry(td.as_str().to_string())
            .or_default()
            .insert(key.kid.clone(), key);
        Ok(())
    }

    /// Reads a JSON file that is either one JWKS (`{"keys": [...]}`, filed under
    /// `default_td`) or an object mapping trust domains (names or `spiffe://` IDs)
    /// to JWKS documents.
    pub fn from_json_file(path: &Path, default_td: &str) -> Result<Self, AuthError> {
        let data = files::read(path, "JWT bundle (JWKS JSON)")?;
        Self::from_json(&data, default_td).map_err(|e| AuthError::BadFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// [`from_json_file`](Self::from_json_file) on bytes.
    pub fn from_json(data: &[u8], default_td: &str) -> Result<Self, AuthError> {
        let doc: Value = serde_json::from_slice(data)
            .map_err(|e| AuthError::Bundle(format!("JWT bundle is not JSON: {e}")))?;
        let mut bundles = Self::new();
        if doc.get("keys").is_some() {
            bundles.set_jwks(default_td, data)?;
            return Ok(bundles);
        }
        let obj = doc.as_object().ok_or_else(|| {
            AuthError::Bundle("JWT bundle must be a JWKS or an object of JWKS".into())
        })?;
        for (td, jwks) in obj {
            let bytes = serde_json::to_vec(jwks).map_err(|e| AuthError::Bundle(e.to_string()))?;
            bundles.set_jwks(td, &bytes)?;
        }
        Ok(bundles)
    }

    /// The key `kid` of trust domain `td`.
    pub fn get(&self, td: &str, kid: &str) -> Option<&JwtKey> {
        self.map.get(td)?.get(kid)
    }

    /// True when `td` has a bundle (possibly empty).
    pub fn has_trust_domain(&self, td: &str) -> bool {
        self.map.contains_key(td)
    }

    /// Trust domains that have a bundle, sorted.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// True when no key is held at all.
    pub fn is_empty(&self) -> bool {
        self.map.values().all(BTreeMap::is_empty)
    }

    /// Adds every key of `other`.
    pub fn merge(&mut self, other: &JwtBundles) {
        for (td, keys) in &other.map {
            let mine = self.map.entry(td.clone()).or_default();
            for (kid, key) in keys {
                mine.insert(kid.clone(), key.clone());
            }
        }
    }

    /// The JWKS document of `td`, as served by `FetchJWTBundles`.
    pub fn jwks_json(&self, td: &str) -> Option<String> {
        let keys = self.map.get(td)?;
        let doc = json!({ "keys": keys.values().map(|k| k.jwk.clone()).collect::<Vec<_>>() });
        Some(doc.to_string())
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Refuses JSON text in which any object, at any depth, repeats a key.
///
/// `serde_json::Value` (and any map) keeps the last of duplicate keys, other
/// JOSE libraries keep the first: a token whose header or claims hold the same
/// key twice means different things to different parsers, so it is refused
/// before anything reads it (RFC 7515 §5.2 allows exactly this).
fn reject_duplicate_keys(part: &'static str, json: &[u8]) -> Result<(), JwtError> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Walks one JSON value; the first repeated key is recorded in `.0` and
    /// ends the walk.
    struct Unique<'a>(&'a std::cell::RefCell<Option<String>>);

    impl<'de> DeserializeSeed<'de> for Unique<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Unique<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique(self.0))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    *self.0.borrow_mut() = Some(key);
                    return Err(serde::de::Error::custom("duplicate key"));
                }
                map.next_value_seed(Unique(self.0))?;
            }
            Ok(())
        }
    }

    let dup = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(json);
    let walked = Unique(&dup).deserialize(&mut de).and_then(|()| de.end());
    match (walked, dup.into_inner()) {
        (_, Some(key)) => Err(JwtError::DuplicateKey { part, key }),
        (Ok(()), None) => Ok(()),
        (Err(e), None) => Err(JwtError::Malformed(format!("{part} is not JSON: {e}"))),
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional;
/// whole seconds are enough here.
#[derive(Clone, Copy, Debug)]
struct NumericDate(u64);

impl<'de> serde::Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v >= 0.0 {
            Ok(NumericDate(v as u64))
        } else {
            Err(serde::de::Error::custom(
                "a NumericDate is a non-negative number",
            ))
        }
    }
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims a JWT-SVID is checked on. A derived struct (no `flatten`, no
/// map) so that serde itself also refuses a repeated known claim; unknown
/// claims are ignored, as the JWT-SVID spec allows.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    aud: Option<Audience>,
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
    iat: Option<NumericDate>,
}

/// A validated JWT-SVID: who it names and until when it vouches for them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtSvid {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `exp` claim: a connection authenticated by this token must not
    /// outlive it.
    pub expiry: SystemTime,
    /// The `aud` claim.
    pub audience: Vec<String>,
}

impl JwtSvid {
    /// Validates a JWT-SVID (JWS compact serialization) for `audience` at
    /// time `now`.
    ///
    /// Checks, in order: structure; header and payload JSON without repeated
    /// keys; header (`alg` supported, no `crit` — this validator implements
    /// no JWS extension, so RFC 7515 §4.1.11 requires refusing any —, `typ`
    /// absent or `JWT`/`JOSE`, `kid` present); `sub` is a SPIFFE ID; the
    /// bundle of `sub`'s trust domain holds `kid` and the key suits `alg`;
    /// the signature (by `jsonwebtoken` on `ring`); `exp` (required) and `nbf`
    /// (if present) with [`JWT_LEEWAY`]; `iat` (if present) not more than
    /// [`JWT_LEEWAY`] in the future; `aud` (string or array) contains
    /// `audience`.
    pub fn validate(
        token: &str,
        audience: &str,
        bundles: &JwtBundles,
        now: SystemTime,
    ) -> Result<JwtSvid, JwtError> {
        let malformed = |s: String| JwtError::Malformed(s);
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "not a JWS compact token (header.payload.signature)".into(),
            ));
        };
        let header_json = unb64("header", h64).map_err(malformed)?;
        reject_duplicate_keys("header", &header_json)?;
        let header: Value = serde_json::from_slice(&header_json)
            .map_err(|e| malformed(format!("header is not JSON: {e}")))?;
        if !header.is_object() {
            return Err(malformed("header is not a JSON object".into()));
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("header has no \"alg\"".into()))?;
        let alg = match alg {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            other => return Err(JwtError::UnsupportedAlg(other.to_string())),
        };
        if let Some(crit) = header.get("crit") {
            let names = match crit {
                Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect(),
                other => vec![other.to_string()],
            };
            return Err(JwtError::UnsupportedCritical(names));
        }
        match header.get("typ") {
            None => {}
            Some(Value::String(t)) if t == "JWT" || t == "JOSE" => {}
            Some(other) => return Err(malformed(format!("header \"typ\" is {other}"))),
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| malformed("header has no \"kid\"".into()))?;

        let payload_json = unb64("payload", p64).map_err(malformed)?;
        reject_duplicate_keys("payload", &payload_json)?;
        let claims: Value = serde_json::from_slice(&payload_json)
            .map_err(|e| malformed(format!("payload is not JSON: {e}")))?;
        if !claims.is_object() {
            return Err(malformed("payload is not a JSON object".into()));
        }
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("no \"sub\" claim".into()))?;
        let id = SpiffeId::parse(sub).map_err(|e| JwtError::BadSubject {
            sub: sub.to_string(),
            reason: e.to_string(),
        })?;
        let td = id.trust_domain();
        if !bundles.has_trust_domain(td) {
            return Err(JwtError::UnknownTrustDomain { td: td.to_string() });
        }
        let key = bundles.get(td, kid).ok_or_else(|| JwtError::UnknownKey {
            kid: kid.to_string(),
        })?;
        key.check_alg(alg)?;

        // The crate checks the structure again, the algorithm against the
        // key's family and the signature; the claim checks are done below,
        // against the caller's `now` rather than the crate's wall clock.
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| {
                let text = e.to_string();
                match e.into_kind() {
                    ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => JwtError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidEcdsaKey => {
                        key.mismatch(&format!("{alg:?}"))
                    }
                    _ => malformed(text),
                }
            })?
            .claims;

        // Claims are trustworthy from here on.
        let now_s = unix_secs(now);
        let leeway = JWT_LEEWAY.as_secs();
        let exp = claims
            .exp
            .ok_or_else(|| malformed("no \"exp\" claim".into()))?
            .0;
        if now_s >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired { exp, now: now_s });
        }
        if let Some(NumericDate(nbf)) = claims.nbf
            && nbf > now_s.saturating_add(leeway)
        {
            return Err(JwtError::NotYetValid { nbf, now: now_s });
        }
        if let Some(NumericDate(iat)) = claims.iat
            && iat > now_s.saturating_add(leeway)
        {
            return Err(JwtError::IssuedInFuture { iat, now: now_s });
        }
        let aud = match claims.aud {
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(items)) => items,
            None => return Err(malformed("no \"aud\" claim".into())),
        };
        if !aud.iter().any(|a| a == audience) {
            return Err(JwtError::WrongAudience {
                expected: audience.to_string(),
                got: aud,
            });
        }
        debug_assert_eq!(claims.sub, id.as_str());
        Ok(JwtSvid {
            spiffe_id: id,
            expiry: UNIX_EPOCH + Duration::from_secs(exp),
            audience: aud,
        })
    }
}

/// Validates a JWT-SVID and returns its SPIFFE ID; see [`JwtSvid::validate`],
/// which also returns the token's expiry.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundles: &JwtBundles,
    now: SystemTime,
) -> Result<SpiffeId, JwtError> {
    JwtSvid::validate(token, audience, bundles, now).map(|s| s.spiffe_id)
}

mod signer;
pub use signer::JwtSigner;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_stable_for_a_key() {
        let a = JwtSigner::generate("example.org").unwrap();
        let b = JwtSigner::from_pkcs8("example.org", &a.pkcs8).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_ne!(a.kid(), JwtSigner::generate("example.org").unwrap().kid());
    }

    #[test]
    fn jwks_round_trips() {
        let s = JwtSigner::generate("example.org").unwrap();
        let b = JwtBundles::from_jwks("example.org", s.jwks_json().as_bytes()).unwrap();
        assert_eq!(b, s.bundles());
        assert!(b.get("example.org", s.kid()).is_some());
    }

    #[test]
    fn x509_keys_are_skipped() {
        let doc = r#"{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["AA"]}]}"#;
        let b = JwtBundles::from_jwks("example.org", doc.as_bytes()).unwrap();
        assert!(b.is_empty());
        assert!(b.has_trust_domain("example.org"));
    }
}
