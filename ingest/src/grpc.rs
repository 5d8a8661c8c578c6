//! The gRPC route: `bandvote.v1.Votes` (unary `Cast`, client-streaming `CastBatch`), the original
//! `confproto.getInfo/returnInfo`, gRPC health and reflection.

use bandvote_domain::{InvalidVote, Route, ballot::BallotInput};
use bandvote_proto::{
    confproto::{self, get_info_server::GetInfo},
    v1::{self, votes_server::Votes},
};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    cast::{BatchError, CastError, Caster, Delivery, NOOP_HEADER, rejected},
    limits::{Admission, Admitted},
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

    /// Admits a call of about `bytes` (see [`crate::limits`]); it holds its place until answered.
    fn admit<T>(&self, request: &Request<T>, bytes: usize) -> Result<Admitted, Status> {
        let peer = request.remote_addr().map(|addr| addr.ip());
        let client = self.admission.client(peer, &request.metadata().clone().into_headers());
        self.admission.admit(client, bytes).map_err(|refusal| refusal.status())
    }

    async fn cast_one(&self, input: BallotInput, delivery: Delivery) -> Result<String, Status> {
        let ballot = self.caster.check(Route::Grpc, &input).map_err(invalid)?;
        let vote_id = self.caster.cast(Route::Grpc, ballot, delivery).await.map_err(status)?;
        Ok(vote_id.to_string())
    }
}

fn input(vote: &v1::Vote) -> BallotInput {
    BallotInput::from_proto(&vote.name, &vote.album, &vote.year, &vote.rank, &vote.vote_id, &vote.voter_id)
}

fn invalid(err: InvalidVote) -> Status {
    Status::invalid_argument(err.to_string())
}

fn batch_status(err: BatchError) -> Status {
    let message = err.to_string();
    match err {
        BatchError::Invalid { invalid, .. } => {
            let each: Vec<String> = invalid.iter().map(|(index, e)| format!("vote {index}: {e}")).collect();
            Status::invalid_argument(format!("{message}: {}", each.join("; ")))
        }
        BatchError::Partial { failed, .. } => {
            let failed: Vec<String> = failed.iter().map(|(index, id)| format!("{index}={id}")).collect();
            Status::unavailable(format!("{message}; re-send these votes (index=vote_id): {}", failed.join(",")))
        }
    }
}

fn status(err: CastError) -> Status {
    match err {
        CastError::Invalid(err) => invalid(err),
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
        // more as its messages arrive.
        let mut admitted = self.admit(&request, 1024)?;
        let (mut read, mut reserved) = (0, 1024);
        let delivery = self.delivery(&request);
        let mut stream = request.into_inner();
        let mut inputs = Vec::new();
        while let Some(vote) = stream.message().await? {
            read += vote.encoded_len();
            if read > reserved {
                let more = (read - reserved).div_ceil(1024) * 1024;
                admitted.grow(more).map_err(|refusal| refusal.status())?;
                reserved += more;
            }
            if inputs.len() == self.max_batch {
                rejected(Route::Grpc, "too_large", inputs.len() + 1);
                return Err(Status::resource_exhausted(format!("a batch may hold at most {} votes", self.max_batch)));
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
