//! A private Kafka cluster shaped like production, for tests that kill brokers.
//!
//! Production runs three Kafka nodes, every topic with three replicas and
//! `min.insync.replicas=2`. [`KafkaCluster::start`] runs such a cluster on loopback: each node is
//! a KRaft broker and controller at once, a child process of `dev/services kafka-node-foreground`
//! with its own free ports and its own folder, and all of them share one cluster id and one static
//! voter set. `dev/services` gives the topics of a cluster of `n` nodes `min(n, 3)` replicas by
//! default and `min.insync.replicas` one less (at least 1), so three nodes are shaped like
//! production and one node is the local single broker.
//!
//! Nodes are numbered from 0 in this API: node `i` is the broker with id `i + 1`. A test kills a
//! node ([`KafkaCluster::kill`], SIGKILL), stops it cleanly ([`KafkaCluster::stop`], SIGTERM) and
//! starts it again on the same ports and data ([`KafkaCluster::restart`]). It asks the cluster's
//! metadata which node leads a partition ([`KafkaCluster::leader_of`]) and waits until every
//! partition of a topic is replicated to enough nodes again ([`KafkaCluster::wait_for_isr`]). Every
//! wait has a deadline and panics past it, naming what it waited for and what it saw last.
//!
//! Dropping the cluster kills every node and removes its folder. With `BANDVOTE_KEEP_LOGS` set,
//! only the data is removed: each node's `kafka.log` (the broker's log), `console.log` (its
//! standard output and error) and configuration stay in the folder, whose path is printed.

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    io::Read,
    path::PathBuf,
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
};

use crate::{repo_root, servers::free_port, unique, wait_for};

/// How long nodes may take to start, or to rejoin after a restart, on a busy two-core machine.
const START_WITHIN: Duration = Duration::from_secs(120);
/// How long one metadata request may take before it is sent again (to another broker, if one is down).
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node may take to shut down cleanly after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(60);

/// A running private Kafka cluster; see the module docs.
pub struct KafkaCluster {
    root: PathBuf,
    cluster_id: String,
    voters: String,
    nodes: Vec<Node>,
    admin: Arc<AdminClient<DefaultClientContext>>,
}

struct Node {
    id: i32,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    process: Option<Child>,
}

/// One partition as the cluster's metadata describes it, in node numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// The node that leads the partition, if one does.
    pub leader: Option<usize>,
    /// The nodes that hold a replica, in the order of the assignment.
    pub replicas: Vec<usize>,
    /// The replicas in sync with the leader (the ISR).
    pub isr: Vec<usize>,
}

/// What one metadata answer says, in broker ids.
struct Metadata {
    brokers: Vec<i32>,
    /// `(partition, leader, replicas, isr)`; the leader is -1 when there is none.
    partitions: Vec<(i32, i32, Vec<i32>, Vec<i32>)>,
}

impl KafkaCluster {
    /// Starts `nodes` nodes, each on two free loopback ports and in its own folder, and waits
    /// until the metadata lists every one of them as a broker.
    pub async fn start(nodes: usize) -> Self {
        assert!(nodes > 0, "a Kafka cluster has at least one node");
        let root = std::env::temp_dir().join(unique("kafka-cluster"));
        let mut taken = BTreeSet::new();
        let mut port = || loop {
            let port = free_port();
            if taken.insert(port) {
                return port;
            }
        };
        let nodes: Vec<Node> = (1..=nodes)
            .map(|id| Node {
                id: i32::try_from(id).expect("a few nodes"),
                dir: root.join(format!("node-{id}")),
                port: port(),
                controller_port: port(),
                process: None,
            })
            .collect();
        let voters: Vec<String> = nodes.iter().map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port)).collect();
        let admin = ClientConfig::new()
            .set("bootstrap.servers", bootstrap(&nodes))
            .set("broker.address.family", "v4")
            .set("log_level", "3")
            .create()
            .expect("a Kafka admin client");
        let mut cluster =
            KafkaCluster { root, cluster_id: cluster_id(), voters: voters.join(","), nodes, admin: Arc::new(admin) };
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        for &node in &all {
            cluster.spawn(node);
        }
        cluster.wait_until_listed(&all).await;
        cluster
    }

    /// The bootstrap list: every node's broker address, comma separated.
    pub fn brokers(&self) -> String {
        bootstrap(&self.nodes)
    }

    /// The bootstrap list of the nodes running now, for a client made while some are down: one
    /// that tries a dead bootstrap broker reports the refused connection as an error, and
    /// [`crate::read_topic`] panics on errors.
    pub fn running_brokers(&self) -> String {
        bootstrap(self.nodes.iter().filter(|n| n.process.is_some()))
    }

    /// Kills the node with SIGKILL and waits until the process is gone.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node with SIGTERM (a controlled shutdown that hands its partitions over) and
    /// waits until it exited.
    pub async fn stop(&mut self, node: usize) {
        let Some(mut child) = self.nodes[node].process.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let what = format!("Kafka node {node} to exit after SIGTERM");
        wait_for(&what, STOP_WITHIN, || {
            let exited = child.try_wait().map_err(|e| e.to_string()).and_then(|s| s.ok_or("running".to_owned()));
            async move { exited }
        })
        .await;
    }

    /// Starts a killed or stopped node again on its ports and data and waits until the metadata
    /// lists it as a broker again.
    pub async fn restart(&mut self, node: usize) {
        assert!(self.nodes[node].process.is_none(), "Kafka node {node} is already running");
        self.spawn(node);
        self.wait_until_listed(&[node]).await;
    }

    /// Every partition of `topic`, as the metadata describes it now.
    pub async fn partitions(&self, topic: &str) -> Vec<PartitionState> {
        let what = format!("the metadata of topic {topic}");
        let metadata = wait_for(&what, START_WITHIN, || self.metadata(Some(topic))).await;
        metadata
            .partitions
            .into_iter()
            .map(|(partition, leader, replicas, isr)| PartitionState {
                partition,
                leader: self.node_of(leader),
                replicas: replicas.into_iter().filter_map(|id| self.node_of(id)).collect(),
                isr: isr.into_iter().filter_map(|id| self.node_of(id)).collect(),
            })
            .collect()
    }

    /// The node that leads `partition` of `topic` now, if one does.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let partitions = self.partitions(topic).await;
        let state = partitions.iter().find(|p| p.partition == partition);
        state.unwrap_or_else(|| panic!("topic {topic} has no partition {partition}")).leader
    }

    /// Waits until every partition of `topic` has a leader and at least `min` replicas in sync,
    /// and returns the partitions as they are then.
    pub async fn wait_for_isr(&self, topic: &str, min: usize) -> Vec<PartitionState> {
        let what = format!("every partition of {topic} to have a leader and {min} in-sync replicas");
        wait_for(&what, START_WITHIN, || async move {
            let partitions = self.partitions(topic).await;
            let replicated = |p: &PartitionState| p.leader.is_some() && p.isr.len() >= min;
            if !partitions.is_empty() && partitions.iter().all(replicated) {
                Ok(partitions)
            } else {
                Err(format!("{partitions:?}"))
            }
        })
        .await
    }

    /// The value of the configuration entry `name` of `topic` (its own, or the brokers' default).
    pub async fn topic_config(&self, topic: &str, name: &str) -> Option<String> {
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = self.admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &options).await;
        let resource = results.expect("describe the topic's configuration").remove(0);
        let resource = resource.unwrap_or_else(|code| panic!("cannot describe topic {topic}: {code}"));
        resource.get(name).and_then(|entry| entry.value.clone())
    }

    fn node_of(&self, broker_id: i32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == broker_id)
    }

    fn spawn(&mut self, node: usize) {
        let Node { id, dir, port, controller_port, .. } = &self.nodes[node];
        std::fs::create_dir_all(dir).expect("the node's folder");
        let console = OpenOptions::new().create(true).append(true).open(dir.join("console.log")).expect("a log file");
        let child = Command::new(repo_root().join("dev/services"))
            .arg("kafka-node-foreground")
            .arg(dir)
            .args([id.to_string(), port.to_string(), controller_port.to_string()])
            .args([&self.voters, &self.cluster_id])
            .stdout(console.try_clone().expect("a log file"))
            .stderr(console)
            .spawn()
            .unwrap_or_else(|e| panic!("Kafka node {node} does not start ({e}); run dev/services install"));
        self.nodes[node].process = Some(child);
    }

    /// Waits until the metadata lists every one of `nodes` as a broker; panics if one exits.
    async fn wait_until_listed(&mut self, nodes: &[usize]) {
        let what = format!("Kafka nodes {nodes:?} (folders under {}) in the metadata", self.root.display());
        let ids: Vec<i32> = nodes.iter().map(|&n| self.nodes[n].id).collect();
        let admin = Arc::clone(&self.admin);
        let processes = &mut self.nodes;
        wait_for(&what, START_WITHIN, || {
            for &node in nodes {
                let Node { process, dir, .. } = &mut processes[node];
                let process = process.as_mut().expect("a started node");
                if let Ok(Some(status)) = process.try_wait() {
                    panic!("Kafka node {node} exited with {status}; see {}/kafka.log", dir.display());
                }
            }
            let metadata = fetch_metadata(Arc::clone(&admin), None);
            let ids = ids.clone();
            async move {
                let brokers = metadata.await?.brokers;
                let missing: Vec<&i32> = ids.iter().filter(|id| !brokers.contains(id)).collect();
                if missing.is_empty() { Ok(()) } else { Err(format!("brokers {missing:?} missing from {brokers:?}")) }
            }
        })
        .await;
    }

    fn metadata(&self, topic: Option<&str>) -> impl Future<Output = Result<Metadata, String>> + 'static {
        fetch_metadata(Arc::clone(&self.admin), topic.map(str::to_owned))
    }
}

/// The broker addresses of `nodes`, comma separated.
fn bootstrap<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> String {
    let addresses: Vec<String> = nodes.into_iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    addresses.join(",")
}

/// Asks one broker for the metadata (of `topic`, or of the brokers only), off the async threads.
async fn fetch_metadata(
    admin: Arc<AdminClient<DefaultClientContext>>,
    topic: Option<String>,
) -> Result<Metadata, String> {
    tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(topic.as_deref(), METADATA_TIMEOUT).map_err(|e| e.to_string())?;
        let brokers = metadata.brokers().iter().map(|b| b.id()).collect();
        let mut partitions = Vec::new();
        if let Some(topic) = metadata.topics().first() {
            if let Some(error) = topic.error() {
                return Err(format!("topic {}: {:?}", topic.name(), rdkafka::types::RDKafkaErrorCode::from(error)));
            }
            for p in topic.partitions() {
                partitions.push((p.id(), p.leader(), p.replicas().to_vec(), p.isr().to_vec()));
            }
        }
        Ok(Metadata { brokers, partitions })
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A new cluster id as Kafka writes them: 16 random bytes in unpadded base64url (22 characters),
/// not starting with `-` (the command line would take it for an option).
fn cluster_id() -> String {
    const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("random bytes");
    // The top bit clear keeps the first character among A-Z and a-f.
    let bits = u128::from_be_bytes(bytes) & !(1 << 127);
    (0..22)
        .map(|i| {
            // 22 characters carry 132 bits: the last one holds the lowest 2 bits and 4 zero bits.
            let sextet = if i < 21 { bits >> (122 - 6 * i) } else { bits << 4 };
            char::from(BASE64URL[(sextet & 63) as usize])
        })
        .collect()
}

impl Drop for KafkaCluster {
    /// Kills every node and removes the cluster's folder; only the data goes when
    /// `BANDVOTE_KEEP_LOGS` is set.
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
        if std::env::var_os("BANDVOTE_KEEP_LOGS").is_some() {
            for node in &self.nodes {
                let _ = std::fs::remove_dir_all(node.dir.join("data"));
            }
            eprintln!("the Kafka cluster's logs are kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_id;

    #[test]
    fn a_cluster_id_is_22_base64url_characters_that_do_not_start_with_a_dash() {
        for _ in 0..100 {
            let id = cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'), "{id}");
            assert!(!id.starts_with('-'), "{id}");
            // 128 bits end in a character whose 4 lowest bits are zero.
            assert!("AQgw".contains(id.chars().last().expect("a character")), "{id}");
        }
    }
}
