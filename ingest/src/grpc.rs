//! The gRPC route: `bandvote.v1.Votes` (unary `Cast`, client-streaming `CastBatch`), the original
//! `confproto.getInfo/returnInfo`, gRPC health and reflection.

use std::net::SocketAddr;

use bandvote_domain::{InvalidVote, Refused, Route, ballot::BallotInput, front::NOOP_HEADER, reply::ErrorCode};
use bandvote_proto::{
    confproto::{self, get_info_server::GetInfo},
    v1::{self, votes_server::Votes},
};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    cast::{BatchError, CastError, Caster, Delivery},
    limits::{Admission, Admitted, Budget, FRONT_CLIENT, Refusal, X_FORWARDED_FOR},
    reply::count_rejected,
};

/// Largest gRPC message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct VoteService {
    caster: Caster,
    max_batch: usize,
    admission: Admission,
}

impl VoteService {
    pub fn new(caster: Caster, max_batch: usize, admission: Admission) -> Self {
        VoteService { caster, max_batch, admission }
    }

    fn delivery<T>(&self, request: &Request<T>) -> Delivery {
        self.caster.delivery(request.metadata().contains_key(NOOP_HEADER))
    }

    /// Admits a call of about `bytes` (see [`crate::limits`]), charging its client one vote; it
    /// holds its place until answered. Returns what the client may still spend. A call from this
    /// host's HTTP front is not admitted again (no place of its own: `None`).
    ///
    /// The client is the peer, or the address `TRUSTED_PROXIES` picks from the `x-forwarded-for`
    /// metadata (Google's proxy in front of the Gateway appends to it as the Ingress's does to the
    /// header). A call from this host's own HTTP front names its client in [`FRONT_CLIENT`]: the
    /// front admitted and charged the vote already, so it is not admitted again. Only a call from
    /// this host is believed (a loopback peer, or the peer address being the one it connected to):
    /// the front and the server are one process in one pod, and a caller outside the pod cannot
    /// connect from either address, so nobody else can name a client or skip the admission.
    fn admit<T>(&self, request: &Request<T>, bytes: usize) -> Result<(Option<Admitted>, Budget), Status> {
        let peer = request.remote_addr();
        let front_client = request.metadata().get(FRONT_CLIENT).and_then(|v| v.to_str().ok()?.parse().ok());
        if let (Some(peer), Some(client)) = (peer, front_client)
            && from_this_host(peer, request.local_addr())
        {
            return Ok((None, self.admission.budget(Some(client))));
        }
        let forwarded_for = request.metadata().get_all(X_FORWARDED_FOR);
        let client =
            self.admission.client(peer.map(|addr| addr.ip()), forwarded_for.iter().map(|v| v.as_encoded_bytes()));
        let admitted = self.admission.admit(client, bytes).map_err(|refusal| refusal.status())?;
        Ok((Some(admitted), self.admission.budget(client)))
    }

    async fn cast_one(&self, input: BallotInput, delivery: Delivery) -> Result<String, Status> {
        let ballot = self.caster.check(&input).map_err(|invalid| status(CastError::Invalid(invalid)))?;
        let vote_id = self.caster.cast(Route::Grpc, ballot, delivery).await.map_err(status)?;
        Ok(vote_id.to_string())
    }
}

/// Whether a connection from `peer` (to `local`) comes from this host: a loopback address, or the
/// address it connected to.
fn from_this_host(peer: SocketAddr, local: Option<SocketAddr>) -> bool {
    let ip = peer.ip().to_canonical();
    ip.is_loopback() || local.is_some_and(|local| local.ip().to_canonical() == ip)
}

/// The metadata that names a refusal's code (and the window's times) for the HTTP front, which
/// answers it as JSON.
pub const REFUSAL_CODE: &str = "x-bandvote-refusal";
pub const WINDOW_OPENS: &str = "x-bandvote-opens";
pub const WINDOW_CLOSES: &str = "x-bandvote-closes";

/// A refused vote: `ALREADY_EXISTS` for a reused `vote_id`, `FAILED_PRECONDITION` otherwise, with
/// the code (and the window) in the metadata.
fn refusal(reason: Refused, message: String, window: Option<&bandvote_domain::Window>) -> Status {
    let message = if reason == Refused::VoteIdConflict { message } else { format!("{}: {message}", reason.code()) };
    let mut status = Status::new(tonic::Code::from(ErrorCode::Refused(reason).grpc()), message);
    let metadata = status.metadata_mut();
    metadata.insert(REFUSAL_CODE, tonic::metadata::MetadataValue::from_static(reason.code()));
    let times = window.map(|w| [(WINDOW_OPENS, &w.opens), (WINDOW_CLOSES, &w.closes)]).into_iter().flatten();
    for (name, instant) in times {
        if let Some(value) = instant.as_ref().and_then(|i| i.text.parse().ok()) {
            metadata.insert(name, value);
        }
    }
    status
}

fn input(vote: &v1::Vote) -> BallotInput {
    BallotInput::from_proto(&vote.name, &vote.album, &vote.year, &vote.rank, &vote.vote_id, &vote.voter_id)
}

fn invalid(err: InvalidVote) -> Status {
    Status::invalid_argument(err.to_string())
}

/// The answer to a batch refused with `err`, its votes counted as turned away.
fn batch_status(err: BatchError) -> Status {
    count_rejected(Route::Grpc, err.code(), err.votes_turned_away());
    let message = err.to_string();
    match err {
        BatchError::Invalid { invalid, .. } => {
            let each: Vec<String> = invalid.iter().map(|(index, e)| format!("vote {index}: {e}")).collect();
            Status::invalid_argument(format!("{message}: {}", each.join("; ")))
        }
        BatchError::Closed { .. } => Status::failed_precondition(message),
        BatchError::Refused { refused, .. } => {
            let each: Vec<String> = refused.iter().map(|(index, r)| format!("vote {index}: {}", r.code())).collect();
            Status::failed_precondition(format!("{message}: {}", each.join("; ")))
        }
        BatchError::Partial { failed, .. } => {
            let failed: Vec<String> = failed.iter().map(|(index, id)| format!("{index}={id}")).collect();
            Status::unavailable(format!("{message}; re-send these votes (index=vote_id): {}", failed.join(",")))
        }
    }
}

/// The answer to a vote refused with `err`, counted as turned away.
fn status(err: CastError) -> Status {
    count_rejected(Route::Grpc, err.code(), 1);
    match err {
        CastError::Invalid(err) => invalid(err),
        CastError::Closed { window } => refusal(Refused::VotingClosed, window.describe(), Some(&window)),
        CastError::Refused { reason, rule } => refusal(reason, crate::cast::refusal_message(reason, &rule), None),
        CastError::Unavailable { vote_id, error } => {
            Status::unavailable(format!("{error}; try again with vote_id {vote_id}"))
        }
    }
}

#[tonic::async_trait]
impl Votes for VoteService {
    async fn cast(&self, request: Request<v1::Vote>) -> Result<Response<v1::CastReply>, Status> {
        let _admitted = self.admit(&request, request.get_ref().encoded_len())?;
        let delivery = self.delivery(&request);
        let vote_id = self.cast_one(input(request.get_ref()), delivery).await?;
        Ok(Response::new(v1::CastReply { vote_id }))
    }

    async fn cast_batch(&self, request: Request<Streaming<v1::Vote>>) -> Result<Response<v1::CastBatchReply>, Status> {
        // A stream's size is not known before it is read: it takes 1 KiB of the byte budget, then
        // more as its messages arrive, and its client one vote, then one more for each further
        // message (the whole batch is refused past the client's burst).
        let (mut admitted, budget) = self.admit(&request, 1024)?;
        let (mut read, mut reserved) = (0, 1024);
        let delivery = self.delivery(&request);
        let mut stream = request.into_inner();
        let mut inputs = Vec::new();
        while let Some(vote) = stream.message().await? {
            read += vote.encoded_len();
            if read > reserved
                && let Some(admitted) = admitted.as_mut()
            {
                let more = (read - reserved).div_ceil(1024) * 1024;
                admitted.grow(more).map_err(|refusal| refusal.status())?;
                reserved += more;
            }
            if inputs.len() == self.max_batch {
                count_rejected(Route::Grpc, ErrorCode::BatchTooLarge, inputs.len() + 1);
                return Err(Status::resource_exhausted(format!("a batch may hold at most {} votes", self.max_batch)));
            }
            if !inputs.is_empty() {
                budget.next_of_batch(inputs.len() + 1).map_err(Refusal::status)?;
            }
            inputs.push(input(&vote));
        }
        if inputs.is_empty() {
            return Err(Status::invalid_argument("the batch holds no votes"));
        }
        match self.caster.cast_all(Route::Grpc, &inputs, delivery).await {
            Ok(ids) => Ok(Response::new(v1::CastBatchReply {
                accepted: ids.len() as u32,
                vote_ids: ids.into_iter().map(|id| id.to_string()).collect(),
            })),
            Err(err) => Err(batch_status(err)),
        }
    }
}

/// The original course service: the same vote, answered with a line of text.
#[tonic::async_trait]
impl GetInfo for VoteService {
    async fn return_info(
        &self,
        request: Request<confproto::RequestId>,
    ) -> Result<Response<confproto::ReplyInfo>, Status> {
        let _admitted = self.admit(&request, request.get_ref().encoded_len())?;
        let r = request.get_ref();
        let delivery = self.delivery(&request);
        let input = BallotInput::from_proto(&r.name, &r.album, &r.year, &r.rank, "", "");
        let vote_id = self.cast_one(input, delivery).await?;
        Ok(Response::new(confproto::ReplyInfo { info: format!("vote accepted: {vote_id}") }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bandvote_domain::Contest;
    use metrics_util::debugging::DebuggingRecorder;

    use super::*;
    use crate::{
        limits::ClientAddress,
        testing::{self, vote_counters},
    };

    fn service(contest: Contest) -> (VoteService, testing::Published) {
        let (caster, published) = testing::caster(contest);
        let admission = Admission::new((8, 64 * 1024, 1024), None, ClientAddress::default(), Duration::from_secs(1));
        (VoteService::new(caster, 3, admission), published)
    }

    fn vote(band: &str, year: &str) -> v1::Vote {
        v1::Vote { name: band.into(), album: "Album".into(), year: year.into(), rank: "1".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn a_refused_call_is_counted_once_under_its_reason_and_publishes_nothing() {
        let recorder = DebuggingRecorder::new();
        let counters = recorder.snapshotter();
        let _local = metrics::set_default_local_recorder(&recorder);
        let (open, published) = service(Contest::default());
        let closed = testing::closed_contest();
        let (closed, closed_published) = service(closed);

        let accepted = open.cast(Request::new(vote("Alpha", "1997"))).await.expect("accepted");
        let refused = open.cast(Request::new(vote("Alpha", "a year"))).await.expect_err("invalid");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        let outside = closed.cast(Request::new(vote("Alpha", "1997"))).await.expect_err("closed");
        assert_eq!(outside.code(), tonic::Code::FailedPrecondition, "{outside:?}");
        let old = open.return_info(Request::new(confproto::RequestId {
            name: "Beta".into(),
            album: "Album".into(),
            year: "1997".into(),
            rank: "first".into(),
        }));
        assert_eq!(old.await.expect_err("a rank that is not a number").code(), tonic::Code::InvalidArgument);

        let published: Vec<String> = published.lock().expect("votes").iter().map(|e| e.vote_id.to_string()).collect();
        assert_eq!(published, [accepted.get_ref().vote_id.clone()], "only the valid vote");
        assert!(closed_published.lock().expect("votes").is_empty());
        let counted = vote_counters(&counters);
        let expected = [
            ("bandvote_ingest_votes_accepted_total route=grpc".to_owned(), 1),
            ("bandvote_ingest_votes_rejected_total route=grpc,reason=invalid".to_owned(), 2),
            ("bandvote_ingest_votes_rejected_total route=grpc,reason=voting_closed".to_owned(), 1),
        ];
        assert_eq!(counted, expected.into_iter().collect(), "each call counted once");
    }

    #[test]
    fn only_a_call_from_this_host_is_believed_to_come_from_the_front() {
        let addr = |text: &str| text.parse::<SocketAddr>().expect("an address");
        assert!(from_this_host(addr("127.0.0.1:40000"), Some(addr("127.0.0.1:50051"))));
        assert!(from_this_host(addr("[::1]:40000"), None), "loopback");
        assert!(from_this_host(addr("[::ffff:127.0.0.1]:40000"), None), "loopback seen by a dual-stack socket");
        assert!(from_this_host(addr("10.8.0.5:40000"), Some(addr("10.8.0.5:50051"))), "the pod's own address");
        assert!(!from_this_host(addr("10.8.0.6:40000"), Some(addr("10.8.0.5:50051"))), "another pod");
        assert!(!from_this_host(addr("35.191.0.9:40000"), Some(addr("10.8.0.5:50051"))), "Google's proxy");
        assert!(!from_this_host(addr("35.191.0.9:40000"), None));
    }
}
