//! The HTTP surface: `GET /votes`, `GET /votes/{vote_id}`, `GET /tallies`, `GET /result`, `GET /openapi.json`,
//! and the operational `/healthz`, `/readyz`, `/metrics`. Every answer is JSON, errors included,
//! in the shape of [`ApiError`].

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::header,
    response::IntoResponse,
    routing::get,
};
use bandvote_domain::{LogId, LogTallies, LoggedVote, VotePage, reply::ErrorCode, vote_log::CertifiedResult};
use bandvote_ops::{health, reply::ApiError};
use serde_json::json;

use crate::{
    query::{Filter, LogQuery, ParamError},
    store::{StoreError, VoteStore},
    tally::{TallyError, TallyRefresher},
};

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_page_size: u32,
}

#[derive(Clone)]
struct AppState {
    store: VoteStore,
    tallies: TallyRefresher,
    limits: Limits,
}

pub fn router(store: VoteStore, refresher: TallyRefresher, limits: Limits) -> Router {
    let ready_store = store.clone();
    let ready: health::ReadyCheck = Arc::new(move || {
        let store = ready_store.clone();
        Box::pin(async move { store.ping().await })
    });
    Router::new()
        .route("/", get(index))
        .route("/votes", get(latest))
        .route("/votes/{vote_id}", get(one))
        .route("/tallies", get(tallies))
        .route("/result", get(result))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .with_state(AppState { store, tallies: refresher, limits })
        .merge(health::routes(ready))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such path; see GET /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "the logs API only reads: use GET")
        })
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn index() -> impl IntoResponse {
    Json(json!({
        "service": "bandvote-logs-api",
        "votes": "/votes",
        "tallies": "/tallies",
        "result": "/result",
        "openapi": "/openapi.json",
    }))
}

async fn latest(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<VotePage>, ApiError> {
    let query = LogQuery::parse(query.as_deref(), state.limits.max_page_size).map_err(invalid)?;
    Ok(Json(state.store.page(&query).await.map_err(unavailable)?))
}

async fn one(
    State(state): State<AppState>,
    Path(vote_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<LoggedVote>, ApiError> {
    if let Some(parameter) = query.as_deref().and_then(|q| form_urlencoded::parse(q.as_bytes()).next()) {
        return Err(invalid(ParamError {
            parameter: parameter.0.into_owned(),
            problem: "unknown parameter; this endpoint takes none".into(),
        }));
    }
    let vote_id =
        LogId::parse(&vote_id).map_err(|problem| invalid(ParamError { parameter: "vote_id".into(), problem }))?;
    match state.store.one(&vote_id).await.map_err(unavailable)? {
        Some(vote) => Ok(Json(vote)),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no vote {:?} in the log (yet: a vote is logged a moment after it is accepted)", vote_id.as_str()),
        )),
    }
}

/// The latest tally the background computed; the refresher logs and counts its own failures.
async fn tallies(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<LogTallies>, ApiError> {
    let filter = Filter::parse(query.as_deref()).map_err(invalid)?;
    match state.tallies.get(&filter).await {
        Ok(answer) => Ok(Json(answer)),
        Err(err @ TallyError::Pending(_)) => Err(ApiError::new(ErrorCode::TallyPending, err.to_string())),
        Err(TallyError::Store(err)) => Err(store_error(&err)),
    }
}

async fn result(State(state): State<AppState>) -> Result<Json<CertifiedResult>, ApiError> {
    match state.store.result().await.map_err(unavailable)? {
        Some(result) => Ok(Json(result)),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no certified result yet: `bandvote-result` publishes it at the close (or on demand)",
        )),
    }
}

fn invalid(err: ParamError) -> ApiError {
    ApiError::new(ErrorCode::InvalidParameter, err.to_string())
        .with_details(json!({"parameter": err.parameter, "problem": err.problem}))
}

fn unavailable(err: StoreError) -> ApiError {
    tracing::warn!(error = %err, "vote log query failed");
    metrics::counter!("bandvote_logs_api_query_errors_total").increment(1);
    store_error(&err)
}

fn store_error(err: &StoreError) -> ApiError {
    match err {
        StoreError::TooManyGroups => ApiError::new(ErrorCode::TooManyGroups, err.to_string()),
        StoreError::TimedOut(_) | StoreError::Unavailable(_) => ApiError::new(ErrorCode::Unavailable, err.to_string()),
    }
}
