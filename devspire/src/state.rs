//! The state behind the Workload API: SVID issuing and rotation, and the snapshots the streams serve.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::bytes::Bytes;
use slim_auth::jwt::{JwtBundles, JwtSigner};
use slim_auth::{AuthError, DevCa, Identity, SpiffeId, TrustBundles};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::pb;

/// What the X.509 streams currently serve.
pub(crate) struct X509Snapshot {
    pub(crate) trust_domain: String,
    pub(crate) svids: Vec<Identity>,
    pub(crate) bundles: TrustBundles,
}

fn concat_der(certs: &[rustls_pki_types::CertificateDer<'_>]) -> Bytes {
    let mut out = Vec::new();
    for c in certs {
        out.extend_from_slice(c.as_ref());
    }
    Bytes::from(out)
}

fn td_id(td: &str) -> String {
    format!("spiffe://{td}")
}

impl X509Snapshot {
    pub(crate) fn x509_svid_response(&self) -> pb::X509svidResponse {
        let own = self
            .bundles
            .get(&self.trust_domain)
            .map(concat_der)
            .unwrap_or_default();
        pb::X509svidResponse {
            svids: self
                .svids
                .iter()
                .map(|svid| pb::X509svid {
                    spiffe_id: svid.spiffe_id.to_string(),
                    x509_svid: concat_der(&svid.cert_chain),
                    x509_svid_key: Bytes::copy_from_slice(svid.key.secret_der()),
                    bundle: own.clone(),
                    hint: String::new(),
                })
                .collect(),
            crl: Vec::new(),
            federated_bundles: self
                .bundles
                .trust_domains()
                .filter(|td| *td != self.trust_domain)
                .filter_map(|td| Some((td_id(td), concat_der(self.bundles.get(td)?))))
                .collect(),
        }
    }

    pub(crate) fn x509_bundles_response(&self) -> pb::X509BundlesResponse {
        pb::X509BundlesResponse {
            crl: Vec::new(),
            bundles: self
                .bundles
                .trust_domains()
                .filter_map(|td| Some((td_id(td), concat_der(self.bundles.get(td)?))))
                .collect(),
        }
    }
}

/// What the JWT bundle streams currently serve.
pub(crate) struct JwtSnapshot {
    pub(crate) bundles: JwtBundles,
}

impl JwtSnapshot {
    pub(crate) fn jwt_bundles_response(&self) -> pb::JwtBundlesResponse {
        pb::JwtBundlesResponse {
            bundles: self
                .bundles
                .trust_domains()
                .filter_map(|td| Some((td_id(td), Bytes::from(self.bundles.jwks_json(td)?))))
                .collect::<HashMap<_, _>>(),
        }
    }
}

/// Server state shared by the gRPC handlers and the handle.
pub(crate) struct State {
    pub(crate) ca: DevCa,
    pub(crate) ids: Vec<SpiffeId>,
    pub(crate) svid_ttl: Duration,
    pub(crate) jwt_ttl: Duration,
    pub(crate) signer: JwtSigner,
    pub(crate) extra_bundles: Mutex<TrustBundles>,
    /// Serializes rotations so two concurrent ones cannot interleave.
    pub(crate) rotate_lock: Mutex<()>,
    pub(crate) x509: watch::Sender<Arc<X509Snapshot>>,
    pub(crate) jwt: watch::Sender<Arc<JwtSnapshot>>,
    pub(crate) stop: CancellationToken,
}

impl State {
    fn issue_all(&self) -> Result<Vec<Identity>, AuthError> {
        self.ids
            .iter()
            .map(|id| self.ca.issue(id, self.svid_ttl))
            .collect()
    }

    fn bundles(&self) -> TrustBundles {
        let mut b = self.ca.bundles();
        b.merge(
            &self
                .extra_bundles
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        b
    }

    fn snapshot(&self, svids: Vec<Identity>) -> X509Snapshot {
        X509Snapshot {
            trust_domain: self.ca.trust_domain().to_string(),
            svids,
            bundles: self.bundles(),
        }
    }

    pub(crate) fn rotate(&self) -> Result<(), AuthError> {
        let _guard = self
            .rotate_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let svids = self.issue_all()?;
        tracing::info!(count = svids.len(), "devspire: rotated X.509-SVIDs");
        self.x509.send_replace(Arc::new(self.snapshot(svids)));
        Ok(())
    }

    pub(crate) fn republish_bundles(&self) {
        let _guard = self
            .rotate_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let svids = self.x509.borrow().svids.clone();
        self.x509.send_replace(Arc::new(self.snapshot(svids)));
    }

    pub(crate) fn fetch_jwt_svid(
        &self,
        req: &pb::JwtsvidRequest,
    ) -> Result<pb::JwtsvidResponse, Status> {
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let ids: Vec<&SpiffeId> = if req.spiffe_id.is_empty() {
            self.ids.iter().collect()
        } else {
            let wanted = SpiffeId::parse(&req.spiffe_id).map_err(|e| {
                Status::invalid_argument(format!("invalid requested SPIFFE ID: {e}"))
            })?;
            match self.ids.iter().find(|id| **id == wanted) {
                Some(id) => vec![id],
                None => return Err(Status::permission_denied("no identity issued")),
            }
        };
        let audience: Vec<&str> = req.audience.iter().map(String::as_str).collect();
        let svids = ids
            .into_iter()
            .map(|id| {
                self.signer
                    .sign(id, &audience, self.jwt_ttl)
                    .map(|token| pb::Jwtsvid {
                        spiffe_id: id.to_string(),
                        svid: token,
                        hint: String::new(),
                    })
                    .map_err(|e| Status::internal(format!("signing failed: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(pb::JwtsvidResponse { svids })
    }

    pub(crate) fn validate_jwt_svid(
        &self,
        req: &pb::ValidateJwtsvidRequest,
    ) -> Result<pb::ValidateJwtsvidResponse, Status> {
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let bundles = self.jwt.borrow().bundles.clone();
        let id =
            slim_auth::validate_jwt_svid(&req.svid, &req.audience, &bundles, SystemTime::now())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Validated above, so the payload decodes.
        let claims = req
            .svid
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .map(|v| json_to_struct(&v));
        Ok(pb::ValidateJwtsvidResponse {
            spiffe_id: id.to_string(),
            claims,
        })
    }
}

fn json_to_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_to_struct(v: &serde_json::Value) -> prost_types::Struct {
    prost_types::Struct {
        fields: v
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), json_to_value(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}
