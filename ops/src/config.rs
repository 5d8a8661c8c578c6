//! Configuration blocks shared by the services. Each is a `clap::Args` flattened into a binary's
//! `Config`, so `--help` lists every variable, and every default works against the local stack.

use std::time::Duration;

#[cfg(feature = "kafka")]
use rdkafka::ClientConfig;

#[cfg(feature = "kafka")]
pub use crate::kafka_security::{KafkaSecurityArgs, SaslMechanism, Secret, SecurityProtocol};

/// Where Kafka is and which topics carry votes.
#[cfg(feature = "kafka")]
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma separated.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The topic that carries accepted votes.
    #[arg(long = "kafka-topic", env = "KAFKA_TOPIC", default_value = "votes")]
    pub topic: String,
    /// Partitions of the votes topic when this service creates it (enough for 5 consumers).
    #[arg(long = "kafka-topic-partitions", env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of the topics when this service creates them.
    #[arg(long = "kafka-replication-factor", env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
    /// Create the topics at start-up if they are missing (off when an operator manages them).
    #[arg(long = "kafka-create-topics", env = "KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,
    /// How this client authenticates to the brokers and whether the connection is encrypted.
    #[command(flatten)]
    pub security: KafkaSecurityArgs,
}

#[cfg(feature = "kafka")]
impl KafkaArgs {
    /// A client configuration with the brokers and the settings every client here shares;
    /// `client_id` names the client in the brokers' logs and metrics.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Resolve `localhost` to IPv4 first; the local broker listens on 127.0.0.1 only.
            .set("broker.address.family", "v4")
            .set("log_level", "4");
        self.security.apply(&mut config);
        config
    }

    /// Checks the settings that only make sense together (a SASL protocol needs a user and a
    /// password, credentials need a SASL protocol, a CA needs TLS). Every service calls it at
    /// start, before its first client; the error names the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        self.security.validate()
    }

    /// The dead-letter topic beside the votes topic.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }
}

/// Where the Redis tallies live.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL, `redis://[:password@]host:port[/db]`.
    #[arg(long = "redis-url", env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Prefix of every Redis key this service writes or reads.
    #[arg(long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", default_value = "bandvote")]
    pub key_prefix: String,
}

/// Where the MongoDB vote log lives.
#[derive(Debug, Clone, clap::Args)]
pub struct MongoArgs {
    /// MongoDB connection string.
    #[arg(long = "mongodb-uri", env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub uri: String,
    /// Database of the vote log.
    #[arg(long = "mongodb-database", env = "MONGODB_DATABASE", default_value = "bandvote")]
    pub database: String,
}

/// The contest file (bands and albums, the voting window, the per-voter rule; see
/// `contest.example.json`). Ingest and the consumer read the same file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ContestArgs {
    /// JSON file of the contest: `bands` (others are refused), `voting.opens`/`voting.closes` (RFC 3339;
    /// votes outside are refused), `voters` (`max_votes`, `max_votes_per_band`, `required`). Without
    /// it the contest is open to any band, at any time, for anyone, like the original.
    #[arg(long = "contest-file", env = "CONTEST_FILE")]
    pub file: Option<std::path::PathBuf>,
    /// The earlier name of CONTEST_FILE (a file of only `bands`); the same format is read.
    #[arg(long = "roster-file", env = "ROSTER_FILE", conflicts_with = "file")]
    pub roster_file: Option<std::path::PathBuf>,
}

impl ContestArgs {
    /// Reads the contest file; `None` without one. The error names the file and what is wrong in it.
    pub fn load(&self) -> Result<Option<bandvote_domain::Contest>, String> {
        let Some(path) = self.file.as_ref().or(self.roster_file.as_ref()) else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the contest file {}: {e}", path.display()))?;
        bandvote_domain::Contest::from_json(&text)
            .map(Some)
            .map_err(|e| format!("the contest file {} is not valid: {e}", path.display()))
    }
}

/// Log output.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log filter, in `tracing` `EnvFilter` syntax.
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
    /// Log format: `text` for people, `json` for containers.
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// Parses a duration such as `5s`, `250ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 5s or 250ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} has an unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
