//! A private Kafka broker that authenticates and authorizes like the GKE one: a SASL_PLAINTEXT
//! listener that takes SCRAM-SHA-512 users only, and Kafka's StandardAuthorizer, which allows
//! only what an ACL grants.
//!
//! [`SecureKafka::start`] runs `dev/services kafka-sasl-foreground` on two free loopback ports
//! with a super user `admin` and the users the test names, each with a random password written
//! into the metadata when the node is formatted. A test creates topics as the admin
//! ([`SecureKafka::create_topic`]), grants ACLs ([`SecureKafka::allow`], Kafka's own AclCommand)
//! and connects as any user ([`SecureKafka::client_config`]). Start-up fails loudly, with the
//! broker's log, when the broker exits or does not answer in time; nothing is skipped.
//!
//! Dropping it kills the broker and removes its folder (kept with `BANDVOTE_KEEP_LOGS`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::OpenOptions,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
};

use crate::{repo_root, servers::free_port, unique, wait_until};

/// How long the broker may take to start on a busy two-core machine.
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long one run of Kafka's AclCommand may take (a JVM start and one request).
const ACL_WITHIN: Duration = Duration::from_secs(60);

/// The super user: the brokers' own, and the one that creates topics and ACLs.
pub const ADMIN: &str = "admin";

/// A running broker with SCRAM users and ACLs; see the module docs.
pub struct SecureKafka {
    dir: PathBuf,
    port: u16,
    passwords: BTreeMap<String, String>,
    process: Child,
}

impl SecureKafka {
    /// Starts the broker with the super user [`ADMIN`] and `users`, and waits until the admin
    /// can read its metadata.
    pub async fn start(users: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("kafka-sasl"));
        std::fs::create_dir_all(&dir).expect("the broker's folder");
        let passwords: BTreeMap<String, String> =
            std::iter::once(ADMIN).chain(users.iter().copied()).map(|u| (u.to_owned(), random_password())).collect();
        assert_eq!(passwords.len(), users.len() + 1, "user names must differ from each other and from {ADMIN}");
        // The super user first: dev/services makes the first line's user the super user.
        let mut lines = format!("{ADMIN}:{}\n", passwords[ADMIN]);
        for user in users {
            let _ = writeln!(lines, "{user}:{}", passwords[*user]);
        }
        let users_file = dir.join("users");
        std::fs::write(&users_file, lines).expect("the users file");
        std::fs::write(dir.join("admin.properties"), admin_properties(&passwords[ADMIN])).expect("admin settings");
        let (port, controller_port) = (free_port(), free_port());
        let console = OpenOptions::new().create(true).append(true).open(dir.join("console.log")).expect("a log file");
        let process = Command::new(repo_root().join("dev/services"))
            .arg("kafka-sasl-foreground")
            .arg(dir.join("node"))
            .args([port.to_string(), controller_port.to_string()])
            .arg(&users_file)
            .stdout(console.try_clone().expect("a log file"))
            .stderr(console)
            .spawn()
            .unwrap_or_else(|e| panic!("the SASL Kafka broker does not start ({e}); run dev/services install"));
        let mut kafka = SecureKafka { dir, port, passwords, process };
        kafka.wait_until_it_answers().await;
        kafka
    }

    /// The bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The password of `user`.
    pub fn password(&self, user: &str) -> &str {
        self.passwords.get(user).unwrap_or_else(|| panic!("the broker has no user {user}"))
    }

    /// A file that holds the password of `user` and nothing else (what a mounted Secret is).
    pub fn password_file(&self, user: &str) -> PathBuf {
        let path = self.dir.join(format!("{user}.password"));
        std::fs::write(&path, self.password(user)).expect("the password file");
        path
    }

    /// A client configuration that authenticates as `user` with `password`.
    pub fn client_config(&self, user: &str, password: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers())
            .set("broker.address.family", "v4")
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", user)
            .set("sasl.password", password)
            .set("log_level", "3");
        config
    }

    /// A client configuration of `user` with its own password.
    pub fn user_config(&self, user: &str) -> ClientConfig {
        self.client_config(user, self.password(user))
    }

    /// Creates `topic` with `partitions` partitions, as the admin.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.user_config(ADMIN).create().expect("an admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &options)
            .await
            .expect("the create request is answered");
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
        }
    }

    /// Grants `user` the `operations` (Kafka's names: Read, Write, Describe, ...) on the resource
    /// that `resource` names in AclCommand's terms (`["--topic", name]`, `["--group", name]`,
    /// `["--cluster"]`), through Kafka's own AclCommand as the admin.
    pub fn allow(&self, user: &str, resource: &[&str], operations: &[&str]) {
        let mut command = Command::new(repo_root().join("dev/services"));
        command
            .arg("kafka-acls")
            .args(["--bootstrap-server", &self.brokers(), "--command-config"])
            .arg(self.dir.join("admin.properties"))
            .args(["--add", "--allow-principal", &format!("User:{user}")])
            .args(resource);
        for operation in operations {
            command.args(["--operation", operation]);
        }
        let what = format!("{operations:?} on {resource:?} for {user}");
        let output = run_within(command, ACL_WITHIN).unwrap_or_else(|e| panic!("AclCommand adding {what}: {e}"));
        assert!(
            output.status.success(),
            "AclCommand could not add {what}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The broker's log, for messages that say why something failed.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node/kafka.log")
    }

    async fn wait_until_it_answers(&mut self) {
        let admin: BaseConsumer = self.user_config(ADMIN).create().expect("an admin client");
        let admin = std::sync::Arc::new(admin);
        let answered = wait_until(START_WITHIN, || {
            let exited = self.process.try_wait().ok().flatten();
            let admin = admin.clone();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("it exited with {status}")));
                }
                tokio::task::spawn_blocking(move || admin.fetch_metadata(None, Duration::from_secs(3)))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|_| Ok(()))
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        if let Err(why) = answered.and_then(|exited| exited) {
            panic!(
                "the SASL Kafka broker in {} did not answer its admin within {START_WITHIN:?}: {why}\n{}",
                self.dir.display(),
                tail(&self.dir.join("console.log"), 20) + &tail(&self.log_path(), 20)
            );
        }
    }
}

impl Drop for SecureKafka {
    /// Kills the broker and removes its folder; with `BANDVOTE_KEEP_LOGS`, only its data.
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::env::var_os("BANDVOTE_KEEP_LOGS").is_some() {
            let _ = std::fs::remove_dir_all(self.dir.join("node/data"));
            eprintln!("the SASL Kafka broker's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The admin's settings for Kafka's command-line tools (`--command-config`).
fn admin_properties(password: &str) -> String {
    format!(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config=\
         org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{ADMIN}\" password=\"{password}\";\n"
    )
}

/// 24 random bytes in hex: safe in the users file, in JAAS and on a command line.
fn random_password() -> String {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `command`, killing it if it takes longer than `within`.
fn run_within(mut command: Command, within: Duration) -> Result<std::process::Output, String> {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let id = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match wait.recv_timeout(within) {
        Ok(output) => output.map_err(|e| e.to_string()),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(id.to_string()).status();
            Err(format!("no answer within {within:?}"))
        }
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            format!("--- {} ---\n{}\n", path.display(), all[all.len().saturating_sub(lines)..].join("\n"))
        }
        Err(e) => format!("--- {}: {e} ---\n", path.display()),
    }
}
