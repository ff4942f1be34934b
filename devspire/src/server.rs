//! The gRPC service `SpiffeWorkloadAPI`, written against tonic's server
//! building blocks (what `tonic-build` would generate, without the codegen).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt as _;
use tonic::codegen::{Body, BoxFuture, BoxStream, Service, StdError, http};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::pb;
use crate::state::State;

/// Metadata key every Workload API request must carry (value `true`), so that a
/// browser or other SSRF-able client cannot be tricked into calling the API.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Refuses requests without the security header, with SPIRE's status and message.
fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get(SECURITY_HEADER) {
        Some(v) if v == "true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

#[derive(Clone)]
pub(crate) struct WorkloadApiServer {
    pub(crate) state: Arc<State>,
}

impl NamedService for WorkloadApiServer {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

/// Ends a response stream when the server shuts down (graceful shutdown would
/// otherwise wait for these never-ending streams forever).
fn until_stopped<T: Send + 'static>(
    state: &State,
    stream: impl futures::Stream<Item = Result<T, Status>> + Send + 'static,
) -> BoxStream<T> {
    Box::pin(stream.take_until(state.stop.clone().cancelled_owned()))
}

struct FetchX509Svid(Arc<State>);

impl ServerStreamingService<pb::X509svidRequest> for FetchX509Svid {
    type Response = pb::X509svidResponse;
    type ResponseStream = BoxStream<pb::X509svidResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<pb::X509svidRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&req)?;
            tracing::debug!("FetchX509SVID stream opened");
            let stream = tokio_stream::wrappers::WatchStream::new(state.x509.subscribe())
                .map(|snap| Ok(snap.x509_svid_response()));
            Ok(Response::new(until_stopped(&state, stream)))
        })
    }
}

struct FetchX509Bundles(Arc<State>);

impl ServerStreamingService<pb::X509BundlesRequest> for FetchX509Bundles {
    type Response = pb::X509BundlesResponse;
    type ResponseStream = BoxStream<pb::X509BundlesResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<pb::X509BundlesRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&req)?;
            let stream = tokio_stream::wrappers::WatchStream::new(state.x509.subscribe())
                .map(|snap| Ok(snap.x509_bundles_response()));
            Ok(Response::new(until_stopped(&state, stream)))
        })
    }
}

struct FetchJwtSvid(Arc<State>);

impl UnaryService<pb::JwtsvidRequest> for FetchJwtSvid {
    type Response = pb::JwtsvidResponse;
    type Future = BoxFuture<Response<pb::JwtsvidResponse>, Status>;

    fn call(&mut self, req: Request<pb::JwtsvidRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&req)?;
            state.fetch_jwt_svid(req.get_ref()).map(Response::new)
        })
    }
}

struct FetchJwtBundles(Arc<State>);

impl ServerStreamingService<pb::JwtBundlesRequest> for FetchJwtBundles {
    type Response = pb::JwtBundlesResponse;
    type ResponseStream = BoxStream<pb::JwtBundlesResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, req: Request<pb::JwtBundlesRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&req)?;
            let stream = tokio_stream::wrappers::WatchStream::new(state.jwt.subscribe())
                .map(|snap| Ok(snap.jwt_bundles_response()));
            Ok(Response::new(until_stopped(&state, stream)))
        })
    }
}

struct ValidateJwtSvid(Arc<State>);

impl UnaryService<pb::ValidateJwtsvidRequest> for ValidateJwtSvid {
    type Response = pb::ValidateJwtsvidResponse;
    type Future = BoxFuture<Response<pb::ValidateJwtsvidResponse>, Status>;

    fn call(&mut self, req: Request<pb::ValidateJwtsvidRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            check_header(&req)?;
            state.validate_jwt_svid(req.get_ref()).map(Response::new)
        })
    }
}

impl<B> Service<http::Request<B>> for WorkloadApiServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        match req.uri().path() {
            "/SpiffeWorkloadAPI/FetchX509SVID" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(FetchX509Svid(state), req).await)
            }),
            "/SpiffeWorkloadAPI/FetchX509Bundles" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(FetchX509Bundles(state), req).await)
            }),
            "/SpiffeWorkloadAPI/FetchJWTSVID" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(FetchJwtSvid(state), req).await)
            }),
            "/SpiffeWorkloadAPI/FetchJWTBundles" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(FetchJwtBundles(state), req).await)
            }),
            "/SpiffeWorkloadAPI/ValidateJWTSVID" => Box::pin(async move {
                let mut grpc = Grpc::new(ProstCodec::default());
                Ok(grpc.unary(ValidateJwtSvid(state), req).await)
            }),
            other => {
                let status = Status::unimplemented(format!("unknown method {other}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
