//! The vote log in MongoDB: one document per vote, `_id` = the vote's log id (`vote_id`, or
//! `<voter_id>/<vote_id>`), with `status` `counted` or `refused` (and the `reason`).
//!
//! Invariant: a vote is logged at most once. Inserting a vote that is already there fails on the
//! `_id` index with a duplicate-key error, which is the expected outcome of a redelivery and is
//! treated as success; any other error fails the batch, which is then retried whole.

use bandvote_domain::{KafkaPosition, LogDocument, MongoNames, Refused, VoteEvent};
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

/// A vote with the Kafka record it was read from, and why it was refused, if it was.
#[derive(Debug, Clone)]
pub struct KafkaVote {
    pub event: VoteEvent,
    pub partition: i32,
    pub offset: i64,
    pub refused: Option<Refused>,
}

impl KafkaVote {
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
    votes: Collection<LogDocument>,
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
    pub async fn insert(&self, votes: &[KafkaVote]) -> mongodb::error::Result<u64> {
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
    pub fn votes(&self) -> &Collection<LogDocument> {
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
pub fn document(vote: &KafkaVote, logged_at: DateTime) -> LogDocument {
    let kafka = KafkaPosition { partition: vote.partition, offset: vote.offset };
    LogDocument::new(vote.document_id(), &vote.event, kafka, vote.refused, logged_at)
}

#[cfg(test)]
mod tests {
    use bandvote_domain::{Ballot, Route, VoteId, VoteStatus};
    use mongodb::bson;

    use super::*;

    fn vote(voter_id: Option<&str>, refused: Option<Refused>) -> KafkaVote {
        let mut ballot = serde_json::json!({"name": "Alux Nahual", "album": "Conquista", "year": 1987, "rank": 9.5});
        if let Some(voter_id) = voter_id {
            ballot["voter_id"] = voter_id.into();
        }
        let event = VoteEvent {
            vote_id: VoteId::parse("0190f5a0-0000-7000-8000-000000000001").unwrap(),
            ballot: Ballot::from_json(&ballot).unwrap(),
            route: Route::Grpc,
            received_at_ms: 1_764_201_600_007,
        };
        KafkaVote { event, partition: 2, offset: 41, refused }
    }

    #[test]
    fn a_logged_vote_reads_back_as_the_event_it_was_written_from() {
        for original in [vote(None, None), vote(Some("dpi-1"), Some(Refused::LimitReached))] {
            let logged_at = DateTime::from_millis(1_764_201_600_100);
            let written = bson::to_document(&document(&original, logged_at)).unwrap();
            let read: LogDocument = bson::from_document(written.clone()).unwrap();
            assert_eq!(read.event().unwrap(), original.event, "{written}");
            assert_eq!(read.refused().unwrap(), original.refused, "{written}");
            assert_eq!((read.kafka.partition, read.kafka.offset), (2, 41));
            assert_eq!(read.id, original.document_id());
            // The fields the indexes, the filters and older readers name.
            assert_eq!(written.get_datetime("received_at").unwrap().timestamp_millis(), 1_764_201_600_007);
            assert_eq!(written.get_datetime("logged_at").unwrap(), &logged_at);
            assert_eq!(written.get_str("route").unwrap(), "grpc");
            assert_eq!(written.get_i32("year").unwrap(), 1987);
            assert_eq!(written.get_str("status").unwrap(), read.status.as_str());
            assert_eq!(written.contains_key("voter_id"), original.event.ballot.voter_id.is_some());
            assert_eq!(written.contains_key("reason"), original.refused.is_some());
        }
    }

    #[test]
    fn a_conflicting_vote_is_logged_beside_the_one_its_id_stands_for() {
        let conflict = vote(None, Some(Refused::VoteIdConflict));
        let logged = document(&conflict, DateTime::now());
        assert_eq!(logged.status, VoteStatus::Refused);
        assert!(logged.id.starts_with(&format!("{}~", conflict.event.log_id())), "{}", logged.id);
        assert_eq!(logged.vote_id.as_deref(), Some(conflict.event.vote_id.as_str()));
    }

    #[test]
    fn a_document_that_no_request_could_have_made_says_why() {
        let mut bad = document(&vote(None, None), DateTime::now());
        bad.rank = 250.0;
        assert!(bad.event().unwrap_err().contains("rank"), "{:?}", bad.event());
        let mut refused = document(&vote(None, Some(Refused::LimitReached)), DateTime::now());
        refused.reason = Some("because".into());
        assert!(refused.refused().unwrap_err().contains("because"));
        refused.reason = None;
        assert_eq!(refused.refused().unwrap_err(), "a refused vote has no reason");
    }
}
