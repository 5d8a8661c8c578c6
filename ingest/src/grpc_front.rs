//! `POST /grpc/insert`: the gRPC route's HTTP front. Like the original "gRPC client", it takes a
//! JSON vote and forwards it over a real gRPC channel to the gRPC server (`bandvote.v1.Votes/Cast`),
//! then answers in JSON. It checks the vote first so that a bad one gets the same field errors as
//! on the HTTP route without a round trip.

use std::time::Duration;

use axum::{
    Extension, Router,
    extract::{FromRef, State},
    response::{IntoResponse, Response},
    routing::post,
};
use bandvote_domain::{
    Ballot, Refused, Route, VoteId,
    front::new_vote_id,
    reply::{ErrorCode, ErrorReply},
};
use bandvote_proto::v1::{self, votes_client::VotesClient};
use tonic::{Code, codegen::http::uri::InvalidUri, transport::Channel};

use crate::{
    grpc::{REFUSAL_CODE, WINDOW_CLOSES, WINDOW_OPENS},
    http::JsonVote,
    limits::{Client, FRONT_CLIENT},
    reply::{self, ApiError, Rejection},
};

#[derive(Clone)]
struct Front {
    client: VotesClient<Channel>,
    timeout: Duration,
}

impl FromRef<Front> for Route {
    fn from_ref(_: &Front) -> Route {
        Route::Grpc
    }
}

/// Routes `/grpc/insert` (and the original variant `/grpc`) to the gRPC server at `target`.
pub fn router(target: &str, timeout: Duration) -> Result<Router, InvalidUri> {
    let channel = Channel::from_shared(target.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    let front = Front { client: VotesClient::new(channel), timeout };
    Ok(Router::new().route("/grpc/insert", post(insert)).route("/grpc", post(insert)).with_state(front))
}

async fn insert(
    State(front): State<Front>,
    client: Option<Extension<Client>>,
    JsonVote(input): JsonVote,
) -> Result<Response, Rejection> {
    let ballot = Ballot::parse(&input).map_err(|invalid| Rejection::new(Route::Grpc, 1, invalid))?;
    // The id is given here, not by the gRPC server, so that a refusal can name it for a safe retry.
    let vote_id = ballot.vote_id.unwrap_or_else(new_vote_id);
    let vote = v1::Vote {
        name: ballot.band,
        album: ballot.album,
        year: ballot.year.get().to_string(),
        rank: ballot.rank.get().to_string(),
        vote_id: vote_id.to_string(),
        voter_id: ballot.voter_id.unwrap_or_default(),
    };
    let mut request = tonic::Request::new(vote);
    request.set_timeout(front.timeout);
    // This request was admitted and charged for its client here; the gRPC server, in this same
    // process, believes this from its own host only and does not charge the vote again.
    if let Some(Extension(Client(ip))) = client
        && let Ok(value) = ip.to_string().parse()
    {
        request.metadata_mut().insert(FRONT_CLIENT, value);
    }
    // The gRPC server counted what it refused; its answer is passed on as it is.
    let passed_on = |error: ApiError| Rejection::Counted(error.into_response());
    let reply = front.client.clone().cast(request).await.map_err(|status| passed_on(from_status(status, &vote_id)))?;
    let vote_id = VoteId::parse(&reply.get_ref().vote_id).map_err(|e| {
        passed_on(ApiError::new(ErrorCode::UpstreamError, format!("the gRPC server sent a bad vote id: {e}")))
    })?;
    Ok(reply::accepted(&vote_id).into_response())
}

fn from_status(status: tonic::Status, vote_id: &VoteId) -> ApiError {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument => ApiError::new(ErrorCode::InvalidVote, message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            ApiError::new(ErrorCode::Unavailable, format!("the gRPC server did not accept the vote: {message}"))
                .with_details(serde_json::json!({ "vote_id": vote_id.as_str() }))
        }
        Code::ResourceExhausted => ApiError::new(ErrorCode::Overloaded, message)
            .with_details(serde_json::json!({ "vote_id": vote_id.as_str() })),
        Code::FailedPrecondition | Code::AlreadyExists => {
            let metadata = status.metadata();
            let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            match text(REFUSAL_CODE).as_deref().and_then(Refused::from_code) {
                Some(reason) => {
                    let message = message.strip_prefix(&format!("{}: ", reason.code())).unwrap_or(&message).to_owned();
                    let mut reply = ErrorReply::refused(reason, message);
                    for (field, name) in [("opens", WINDOW_OPENS), ("closes", WINDOW_CLOSES)] {
                        if let Some(value) = text(name) {
                            reply.details.insert(field.into(), value.into());
                        }
                    }
                    ApiError(reply)
                }
                None => ApiError::new(ErrorCode::UpstreamError, format!("the gRPC server refused: {message}")),
            }
        }
        code => ApiError::new(ErrorCode::UpstreamError, format!("the gRPC server answered {code:?}: {message}")),
    }
}
