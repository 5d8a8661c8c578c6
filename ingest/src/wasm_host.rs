//! The Wasm route with its component embedded: this process runs the checker component
//! (`ingest-wasm`, world `checker` of `ingest-wasm/wit/checker.wit`) in a WebAssembly sandbox and
//! casts the votes it returns on its own producer. One request is one fresh instance: the
//! component is compiled once at start-up and pre-instantiated, and instances come from a pooling
//! allocator, so a request pays for a call into the sandbox, not for a runtime or a loopback hop.
//!
//! For a request to a vote path of the Wasm route, in order:
//!
//! 1. admission (limits, rate, in-flight bytes) and the body limit, as on every route;
//! 2. the component reads the body and checks every vote with `bandvote-domain`, giving each its
//!    id; a bad request is answered with the status and JSON body the component returns (the
//!    native route's, from the same code);
//! 3. the votes it returns are cast as [`Route::Wasm`] by the [`Caster`]: checked again here
//!    (the sandbox's output is input like any other) with the contest's roster and rules, and
//!    answered once Kafka acknowledged them.
//!
//! The guest gets no files, no network, no environment and no inherited streams: only clocks and
//! randomness (for new vote ids), a bounded memory, and a bounded amount of fuel per call.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::{FromRequest, Request, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::post,
};
use bandvote_domain::{
    Route,
    ballot::{BallotInput, Input},
    front::{BATCH_PATH, NOOP_HEADER, VOTE_PATHS},
    reply::{ErrorCode, ErrorReply},
};
use serde_json::Value;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::{
    cast::Caster,
    http::{Limits, RawBody},
    limits::{Budget, Refusal as Overdrawn},
    reply::{self, ApiError, Rejection, count_rejected},
};

/// The generated bindings of the `checker` world. The derives and the ABI glue are `unsafe` code,
/// so the lint is lifted for this module only.
#[allow(unsafe_code)]
mod bindings {
    wasmtime::component::bindgen!({ world: "checker", path: "../ingest-wasm/wit" });
}

/// Instances alive at once: a call runs to its end on the thread that makes it, so at most one
/// per thread of the runtime; the pool is sized well above that.
const INSTANCES: u32 = 64;
/// Largest linear memory of one instance: a batch of [`crate::Config::max_batch_votes`] votes in a
/// body of `MAX_BODY_BYTES` needs a few MiB.
const MEMORY_BYTES: usize = 64 << 20;
/// Fuel for one call (about one unit per WebAssembly instruction): a 1000-vote batch uses a few
/// million; a guest that runs past this is stopped, and the request answered 503.
const FUEL: u64 = 2_000_000_000;
/// Linear memory (and table space) of a slot reset in place when its instance ends, not returned
/// to the kernel: with Linux's `PAGEMAP_SCAN` (6.7 and later) only the pages the call wrote are
/// reset, without it the whole kept region is zeroed with `memset`; either way a single vote's
/// instance costs no unmapping, no TLB shoot-down on the other cores and no page faults in the
/// next instance. What lies above is `madvise`d as before.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// The checker component, compiled and linked, ready to instantiate.
#[derive(Clone)]
pub struct Checker {
    engine: Engine,
    pre: Arc<bindings::CheckerPre<Sandbox>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

/// What one instance owns: its WASI context (clocks and randomness only) and resource table.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A vote the component checked, with its id.
pub type Checked = bindings::Ballot;

/// A request the component refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub status: u16,
    /// The JSON body to answer with.
    pub body: String,
    /// The body's error code, read once.
    pub code: Option<ErrorCode>,
    /// The votes it turns away (1 for a body that is not a vote or a batch).
    pub votes: usize,
}

impl Checker {
    /// Compiles the component at `path` (`bandvote_checker.wasm`) and links it.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read WASM_COMPONENT {}", path.display()))?;
        Checker::from_bytes(&bytes).with_context(|| format!("WASM_COMPONENT {} is not the checker", path.display()))
    }

    /// Compiles a component from its bytes and links it.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(INSTANCES)
            .total_core_instances(INSTANCES * 8)
            .total_memories(INSTANCES * 2)
            .total_tables(INSTANCES * 4)
            .max_memory_size(MEMORY_BYTES)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool)).consume_fuel(true);
        let engine = Engine::new(&config)?;
        let component = Component::from_binary(&engine, bytes)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let pre = bindings::CheckerPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Checker { engine, pre: Arc::new(pre) })
    }

    /// Checks one vote's body in a fresh instance.
    pub fn vote(&self, body: &[u8]) -> anyhow::Result<Result<Checked, Refused>> {
        self.call(|checker, store| checker.call_check_vote(store, body)).map(|checked| checked.map_err(refused))
    }

    /// Checks a batch's body, of at most `most` votes, in a fresh instance.
    pub fn batch(&self, body: &[u8], most: usize) -> anyhow::Result<Result<Vec<Checked>, Refused>> {
        let most = u32::try_from(most).unwrap_or(u32::MAX);
        self.call(|checker, store| checker.call_check_batch(store, body, most)).map(|checked| checked.map_err(refused))
    }

    fn call<T>(
        &self,
        call: impl FnOnce(&bindings::Checker, &mut Store<Sandbox>) -> wasmtime::Result<T>,
    ) -> anyhow::Result<T> {
        let sandbox = Sandbox { wasi: WasiCtx::builder().build(), table: ResourceTable::new() };
        let mut store = Store::new(&self.engine, sandbox);
        store.set_fuel(FUEL)?;
        let checker = self.pre.instantiate(&mut store)?;
        Ok(call(&checker, &mut store)?)
    }
}

fn refused(refusal: bindings::Refusal) -> Refused {
    let code = serde_json::from_str::<Value>(&refusal.body).ok().and_then(|body| {
        let code = body["error"]["code"].as_str()?;
        ErrorCode::EVERY.into_iter().find(|known| known.code() == code)
    });
    Refused { status: refusal.status, body: refusal.body, code, votes: (refusal.votes as usize).max(1) }
}

/// A checked vote as the caster reads votes: every field as the component gave it.
pub fn ballot_input(vote: Checked) -> BallotInput {
    BallotInput {
        name: Input::Text(vote.band),
        album: Input::Text(vote.album),
        year: Input::Number(vote.year.into()),
        rank: serde_json::Number::from_f64(vote.rank).map_or(Input::Other("number"), Input::Number),
        vote_id: Input::Text(vote.vote_id),
        voter_id: vote.voter_id.map_or(Input::Missing, Input::Text),
    }
}

#[derive(Clone)]
struct Host {
    caster: Caster,
    limits: Limits,
    checker: Checker,
}

impl axum::extract::FromRef<Host> for Route {
    fn from_ref(_: &Host) -> Route {
        Route::Wasm
    }
}

/// The Wasm route's vote paths (`/wasm` and the native route's paths after it), served with the
/// component embedded.
pub fn router(caster: Caster, limits: Limits, checker: Checker) -> Router {
    let paths =
        VOTE_PATHS.into_iter().map(|path| if path == "/" { "/wasm".to_owned() } else { format!("/wasm{path}") });
    let router = paths.fold(Router::new(), |router, path| router.route(&path, post(cast_one)));
    router.route(&format!("/wasm{BATCH_PATH}"), post(cast_batch)).with_state(Host { caster, limits, checker })
}

async fn cast_one(State(host): State<Host>, headers: HeaderMap, RawBody(body): RawBody) -> Result<Response, Rejection> {
    let refused = |error: ApiError| Rejection::new(Route::Wasm, 1, error);
    let input = match host.checker.vote(&body).map_err(|e| refused(sandbox_failed(&e)))? {
        Ok(vote) => ballot_input(vote),
        Err(refusal) => return Err(answer(refusal)),
    };
    let ballot = host.caster.check(&input).map_err(|e| refused(e.into()))?;
    let delivery = host.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_id = host.caster.cast(Route::Wasm, ballot, delivery).await.map_err(|e| refused(e.into()))?;
    Ok(reply::accepted(&vote_id).into_response())
}

async fn cast_batch(State(host): State<Host>, headers: HeaderMap, request: Request) -> Result<Response, Rejection> {
    let budget = request.extensions().get::<Budget>().cloned();
    let RawBody(body) = RawBody::from_request(request, &host).await?;
    let checked = host
        .checker
        .batch(&body, host.limits.max_batch)
        .map_err(|e| Rejection::new(Route::Wasm, 1, sandbox_failed(&e)))?;
    // As on the native route: the client's rate is charged a vote for each vote of the batch, a
    // batch refused for its votes included, but not one refused for its size.
    let votes = match &checked {
        Ok(votes) => votes.len(),
        Err(refusal) if refusal.code == Some(ErrorCode::BatchTooLarge) => 0,
        Err(refusal) => refusal.votes,
    };
    if let Some(budget) = budget.filter(|_| votes > 0) {
        budget.rest_of_batch(votes).map_err(|refusal: Overdrawn| Rejection::Counted(refusal.response()))?;
    }
    let inputs: Vec<BallotInput> = checked.map_err(answer)?.into_iter().map(ballot_input).collect();
    let delivery = host.caster.delivery(headers.contains_key(NOOP_HEADER));
    let vote_ids =
        host.caster.cast_all(Route::Wasm, &inputs, delivery).await.map_err(|e| Rejection::batch(Route::Wasm, e))?;
    Ok(reply::accepted_all(&vote_ids).into_response())
}

/// The component's refusal as the answer, counted under its code.
fn answer(refusal: Refused) -> Rejection {
    let status = axum::http::StatusCode::from_u16(refusal.status).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    if let Some(code) = refusal.code {
        count_rejected(Route::Wasm, code, refusal.votes);
    }
    let response = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], refusal.body).into_response();
    Rejection::Counted(response)
}

/// A call into the sandbox that did not return (a trap, the fuel or the pool exhausted): the
/// vote is not taken, and a retry may succeed.
fn sandbox_failed(error: &anyhow::Error) -> ApiError {
    tracing::error!(error = format!("{error:#}"), "the Wasm checker failed");
    ApiError(ErrorReply::unavailable(format!("the vote checker failed: {error}")))
}

#[cfg(test)]
mod tests {
    //! These need the built component (`dev/build-wasm`, which `dev/test` runs first; see
    //! [`bandvote_testkit::wasm_checker`]), and no services.

    use std::sync::OnceLock;

    use axum::extract::DefaultBodyLimit;
    use bandvote_domain::Contest;
    use metrics_util::debugging::DebuggingRecorder;
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        http,
        testing::{self, Published, post, vote, vote_counters},
    };

    const LIMITS: Limits = Limits { max_body_bytes: 1024, max_batch: 10 };

    fn checker() -> Checker {
        static CHECKER: OnceLock<Checker> = OnceLock::new();
        let load = || {
            let path = bandvote_testkit::wasm_checker();
            Checker::load(&path).unwrap_or_else(|e| panic!("{e:#}: build the component again (dev/build-wasm)"))
        };
        CHECKER.get_or_init(load).clone()
    }

    /// The native HTTP route and the embedded Wasm route of one caster for `contest`.
    fn routes(contest: Contest) -> (Router, Published) {
        let (caster, published) = testing::caster(contest);
        let router = http::router(caster.clone(), LIMITS).merge(router(caster, LIMITS, checker()));
        (router.layer(DefaultBodyLimit::max(LIMITS.max_body_bytes)), published)
    }

    #[tokio::test]
    async fn checked_votes_are_cast_as_the_wasm_route_under_the_ids_they_were_answered_with() {
        let recorder = DebuggingRecorder::new();
        let counters = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (router, published) = routes(Contest::default());
        let chosen = "0190b6a4-6c5e-7d3a-9f1e-2b4c6d8e0a12";
        let mut with_id = vote("Alpha");
        with_id["vote_id"] = json!(chosen);
        with_id["voter_id"] = json!("voter-1");

        let mut answered = Vec::new();
        for (path, body) in
            [("/wasm/votes", with_id.clone()), ("/wasm/rust/send_data", vote("Beta")), ("/wasm", vote("Gamma"))]
        {
            let (status, reply) = post(&router, path, body.to_string()).await;
            assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")), "{path}: {reply}");
            answered.push(reply["vote_id"].as_str().expect("an id").to_owned());
        }
        let batch = json!({"votes": [vote("Delta"), {"name": "Epsilon", "album": "B", "year": 2001, "rank": 7}]});
        let (status, reply) = post(&router, "/wasm/votes/batch", batch.to_string()).await;
        assert_eq!((status, reply["accepted"].as_u64()), (200, Some(2)), "{reply}");
        answered
            .extend(reply["vote_ids"].as_array().expect("ids").iter().map(|id| id.as_str().expect("an id").to_owned()));

        assert_eq!(answered[0], chosen, "the client's vote_id is kept");
        for id in &answered[1..] {
            let uuid = uuid::Uuid::parse_str(id).expect("a new id is a UUID");
            assert_eq!(uuid.get_version_num(), 7, "{id}: a new id is a UUIDv7");
        }
        let published = published.lock().expect("the published votes").clone();
        let seen: Vec<(&str, Route, &str)> =
            published.iter().map(|e| (e.ballot.band.as_str(), e.route, e.vote_id.as_str())).collect();
        let bands = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon"];
        let expected: Vec<(&str, Route, &str)> =
            bands.iter().zip(&answered).map(|(band, id)| (*band, Route::Wasm, id.as_str())).collect();
        assert_eq!(seen, expected, "each vote published once, in order, with the id it was answered with");
        assert_eq!(published[0].ballot.voter_id.as_deref(), Some("voter-1"));
        assert_eq!((published[4].ballot.year.get(), published[4].ballot.rank.get()), (2001, 7.0));
        let counted = vote_counters(&counters);
        assert_eq!(counted.get("bandvote_ingest_votes_accepted_total route=wasm"), Some(&5), "{counted:?}");
    }

    #[tokio::test]
    async fn bad_input_gets_the_native_routes_answer_and_is_counted_alike() {
        let recorder = DebuggingRecorder::new();
        let counters = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (open, open_published) = routes(Contest::default());
        let (closed, closed_published) = routes(testing::closed_contest());
        let eleven = Value::Array((0..11).map(|i| vote(&format!("Band {i}"))).collect()).to_string();
        let mut bad_rank = vote("A");
        bad_rank["rank"] = json!("101");
        // (router, native path, body)
        let cases: [(&Router, &str, String); 12] = [
            (&open, "/votes", "{".into()),
            (&open, "/votes", json!({"name": "A"}).to_string()),
            (&open, "/votes", bad_rank.to_string()),
            (&open, "/votes", "[1]".into()),
            (&open, "/votes", "x".repeat(2000)),
            (&open, "/votes/batch", "[]".into()),
            (&open, "/votes/batch", json!({"votes": 3}).to_string()),
            (&open, "/votes/batch", eleven),
            (&open, "/votes/batch", json!([vote("A"), 5, vote("B"), "x"]).to_string()),
            (&open, "/votes/batch", json!([vote("A"), {"name": "B"}, bad_rank]).to_string()),
            (&closed, "/votes", vote("A").to_string()),
            (&closed, "/votes/batch", json!([vote("A"), vote("B"), vote("C")]).to_string()),
        ];
        // Each snapshot of the debugging recorder takes the counts since the one before.
        let counted = |route: &str| -> Vec<(String, u64)> {
            let counts = vote_counters(&counters).into_iter().filter(|(_, n)| *n > 0);
            counts.map(|(key, n)| (key.replace(route, "ROUTE"), n)).collect()
        };
        for (router, path, body) in cases {
            counted("");
            let native = post(router, path, body.clone()).await;
            let native_counts = counted("route=http");
            let wasm = post(router, &format!("/wasm{path}"), body).await;
            assert!(native.0 >= 400, "{path}: refused on the native route: {native:?}");
            assert_eq!(wasm, native, "{path}: the same status and body on both routes");
            assert!(!native_counts.is_empty(), "{path}: the native refusal is counted");
            assert_eq!(counted("route=wasm"), native_counts, "{path}: counted alike");
        }
        assert!(open_published.lock().expect("votes").is_empty(), "nothing refused is published");
        assert!(closed_published.lock().expect("votes").is_empty(), "nothing refused is published");
    }
}
