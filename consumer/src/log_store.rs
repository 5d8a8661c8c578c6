//! The vote log in MongoDB: one document per vote, `_id` = the vote's log id (`vote_id`, or
//! `<voter_id>/<vote_id>`), with `status` `counted` or `refused` (and the `reason`).
//!
//! Invariant: a vote is logged at most once. Inserting a vote that is already there fails on the
//! `_id` index with a duplicate-key error, which is the expected outcome of a redelivery and is
//! treated as success; any other error fails the batch, which is then retried whole.

use bandvote_domain::{MongoNames, Refused, VoteEvent, VoteStatus};
use mongodb::{
    Client, Collection, IndexModel,
    bson::{DateTime, Document, doc},
    error::{ErrorKind, InsertManyError},
    options::{ClientOptions, IndexOptions, WriteConcern},
};

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's "namespace not found" error code.
const NAMESPACE_NOT_FOUND: i32 = 26;

/// A vote with where it was read from Kafka, and why it was refused, if it was.
#[derive(Debug, Clone)]
pub struct LoggedVote {
    pub event: VoteEvent,
    pub partition: i32,
    pub offset: i64,
    pub refused: Option<Refused>,
}

impl LoggedVote {
    /// The document's `_id`: the vote's [log id](VoteEvent::log_id), except for a vote refused as a
    /// `vote_id_conflict`, which is another vote than the one the id stands for: its id is followed
    /// by `~` and its content's fingerprint, so that both are in the log.
    pub fn document_id(&self) -> String {
        let id = self.event.log_id();
        match self.refused {
            Some(Refused::VoteIdConflict) => {
                let fingerprint: String = self.event.content_fingerprint().iter().map(|b| format!("{b:02x}")).collect();
                format!("{id}~{fingerprint}")
            }
            _ => id,
        }
    }
}

#[derive(Clone)]
pub struct LogStore {
    client: Client,
    votes: Collection<Document>,
}

impl LogStore {
    pub async fn connect(uri: &str, names: &MongoNames) -> mongodb::error::Result<Self> {
        let mut options = ClientOptions::parse(uri).await?;
        // A vote is logged when it is on disk: the commit that follows a write (and after which
        // Kafka will not deliver the vote again) must not outlive a crash of the log store. The
        // URI's `w` (majority, in production) is kept; only the journal is insisted on.
        options.write_concern.get_or_insert_with(WriteConcern::default).journal.get_or_insert(true);
        let client = Client::with_options(options)?;
        let votes = client.database(&names.database).collection(&names.collection);
        Ok(LogStore { client, votes })
    }

    /// Creates the indexes for "newest first" and the filters that do not exist yet.
    ///
    /// Only missing indexes are asked for: FerretDB 1.24 drops the connection when `createIndexes`
    /// names an index that already exists.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let existing = match self.votes.list_index_names().await {
            Ok(names) => names,
            // A collection that does not exist yet has no indexes.
            Err(err) if matches!(err.kind.as_ref(), ErrorKind::Command(c) if c.code == NAMESPACE_NOT_FOUND) => {
                Vec::new()
            }
            Err(err) => return Err(err),
        };
        let missing: Vec<_> =
            MongoNames::INDEXES.iter().filter(|(name, _)| !existing.iter().any(|e| e == name)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let models = missing.into_iter().map(|(name, keys)| {
            let keys: Document = keys.iter().map(|(field, order)| ((*field).to_owned(), (*order).into())).collect();
            IndexModel::builder().keys(keys).options(IndexOptions::builder().name((*name).to_owned()).build()).build()
        });
        self.votes.create_indexes(models).await.map(drop)
    }

    /// Inserts a batch; returns how many votes were new.
    pub async fn insert(&self, votes: &[LoggedVote]) -> mongodb::error::Result<u64> {
        if votes.is_empty() {
            return Ok(0);
        }
        let logged_at = DateTime::now();
        let documents = votes.iter().map(|vote| document(vote, logged_at));
        match self.votes.insert_many(documents).ordered(false).await {
            Ok(result) => Ok(result.inserted_ids.len() as u64),
            Err(err) => match err.kind.as_ref() {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors: Some(errors),
                    write_concern_error: None,
                    ..
                }) if errors.iter().all(|e| e.code == DUPLICATE_KEY) => Ok((votes.len() - errors.len()) as u64),
                _ => Err(err),
            },
        }
    }

    /// The vote log collection.
    pub fn votes(&self) -> &Collection<Document> {
        &self.votes
    }

    /// The certified results' collection of the same database.
    pub fn results(&self, names: &MongoNames) -> Collection<Document> {
        self.client.database(&names.database).collection(MongoNames::RESULTS)
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.client.database("admin").run_command(doc! {"ping": 1}).await.map(drop).map_err(|e| format!("mongodb: {e}"))
    }
}

/// The log document of a vote, as [`LogStore::insert`] writes it.
pub fn document(vote: &LoggedVote, logged_at: DateTime) -> Document {
    let event = &vote.event;
    let ballot = &event.ballot;
    let mut document = doc! {
        "_id": vote.document_id(),
        "vote_id": event.vote_id.as_str(),
        "name": &ballot.band,
        "album": &ballot.album,
        "year": ballot.year.get(),
        "rank": ballot.rank.get(),
        "route": event.route.as_str(),
        "received_at": DateTime::from_millis(event.received_at_ms),
        "kafka": { "partition": vote.partition, "offset": vote.offset },
        "logged_at": logged_at,
    };
    if let Some(voter_id) = &ballot.voter_id {
        document.insert("voter_id", voter_id);
    }
    match vote.refused {
        None => document.insert("status", VoteStatus::Counted.as_str()),
        Some(reason) => {
            document.insert("status", VoteStatus::Refused.as_str());
            document.insert("reason", reason.code())
        }
    };
    document
}
