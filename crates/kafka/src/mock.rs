//! librdkafka's in-process mock cluster, for testing code that uses Kafka
//! without a broker process (the `mock` feature).
//!
//! The mock is a real Kafka-protocol broker listening on loopback ports, so
//! other processes (a service binary under test, the `choreo` CLI) can reach
//! it at [`MockKafka::bootstrap_servers`]. It is not `Send`: keep it in the
//! test's body. It has no admin API: create topics with
//! [`MockKafka::create_topic`]. Consumer-group joins take about 3 s.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::{Error, Result};

/// A mock Kafka cluster; stopped when dropped.
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap_servers", &self.bootstrap_servers())
            .finish()
    }
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Result<MockKafka> {
        let cluster = MockCluster::new(brokers).map_err(|source| Error::Kafka {
            context: "starting librdkafka's mock cluster".into(),
            source,
        })?;
        Ok(MockKafka { cluster })
    }

    /// Where clients connect: `host:port,…` on loopback.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates a topic (the mock has no admin API).
    pub fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.cluster
            .create_topic(name, partitions as i32, 1)
            .map_err(|source| Error::Kafka {
                context: format!("creating topic '{name}' on the mock cluster"),
                source,
            })
    }
}
