//! The topics a bus publishes to and subscribes to: their partition counts,
//! looked up once, and creating the missing ones as configured.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::client::{Inner, LogContext};
use crate::config::Role;
use crate::{Error, Result};

impl Inner {
    pub(crate) fn known_partitions(&self, topic: &str) -> Option<u32> {
        self.topics.read().get(topic).copied()
    }

    /// The partition count of `topic`, creating it when missing. `partitions`
    /// forces creation with that count.
    pub(crate) async fn ensure_topic(&self, topic: &str, partitions: Option<u32>) -> Result<u32> {
        if let Some(n) = self.known_partitions(topic) {
            return Ok(n);
        }
        let _one_at_a_time = self.creating.lock().await;
        if let Some(n) = self.known_partitions(topic) {
            return Ok(n);
        }
        let n = match self.lookup(topic, false).await? {
            Some(n) => n,
            None if partitions.is_none() && !self.config.create_topics => {
                return Err(Error::Topic {
                    topic: topic.to_owned(),
                    reason: format!(
                        "does not exist and `create_topics` is off: create it (with {} partitions) or switch `create_topics` on",
                        self.config.partitions_of(topic)
                    ),
                });
            }
            None => {
                let want = partitions.unwrap_or_else(|| self.config.partitions_of(topic));
                self.create(topic, want).await?
            }
        };
        self.topics.write().insert(topic.to_owned(), n);
        Ok(n)
    }

    /// The partition count of `topic` from the cluster's metadata; `None` when
    /// it does not exist. With `auto_create`, asks the broker to create it
    /// (brokers that allow auto-creation do, with their default partition count).
    pub(crate) async fn lookup(&self, topic: &str, auto_create: bool) -> Result<Option<u32>> {
        let config = self.config.clone();
        let watch = self.watch.clone();
        let topic_owned = topic.to_owned();
        let timeout = self.config.admin_timeout;
        let started = Instant::now();
        let run = move || -> Result<Option<u32>> {
            let mut client_config = config.client_config(Role::Admin, None)?;
            if auto_create {
                client_config.set("allow.auto.create.topics", "true");
            }
            // A short-lived client: its metadata requests carry the
            // auto-creation flag as configured, the producer's never does.
            let context = LogContext {
                watch: watch.clone(),
            };
            let client: BaseConsumer<LogContext> =
                BaseConsumer::from_config_and_context(&client_config, context).map_err(
                    |source| Error::Client {
                        role: "metadata client",
                        brokers: config.brokers.clone(),
                        source: watch.redact(source),
                    },
                )?;
            let md = client
                .fetch_metadata(Some(&topic_owned), timeout)
                .map_err(|source| {
                    watch.explain(
                        started,
                        Error::Kafka {
                            context: format!(
                                "looking up topic '{topic_owned}' on brokers '{}'",
                                config.brokers
                            ),
                            source,
                        },
                    )
                })?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == topic_owned)
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as u32))
        };
        tokio::task::spawn_blocking(run)
            .await
            .map_err(|_| Error::Topic {
                topic: topic.to_owned(),
                reason: "the metadata lookup was cancelled".into(),
            })?
    }

    async fn admin(&self) -> Result<&AdminClient<LogContext>> {
        self.admin
            .get_or_try_init(|| async {
                let c = self.config.client_config(Role::Admin, None)?;
                let context = LogContext {
                    watch: self.watch.clone(),
                };
                AdminClient::from_config_and_context(&c, context).map_err(|source| Error::Client {
                    role: "admin client",
                    brokers: self.config.brokers.clone(),
                    source: self.watch.redact(source),
                })
            })
            .await
    }

    /// Creates `topic` with the admin API, falling back to the broker's
    /// auto-creation when the broker does not support CreateTopics.
    async fn create(&self, topic: &str, partitions: u32) -> Result<u32> {
        let admin = self.admin().await?;
        let replication =
            TopicReplication::Fixed(self.config.replication_factor.map_or(-1, i32::from));
        let new = NewTopic::new(topic, partitions as i32, replication);
        let options = AdminOptions::new()
            .request_timeout(Some(self.config.admin_timeout))
            .operation_timeout(Some(self.config.admin_timeout));
        let refused = match admin.create_topics([&new], &options).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) | None => None,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => None,
                Some(Err((_, code))) => Some(code.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(reason) = refused {
            tracing::debug!(topic, %reason, "CreateTopics failed; trying the broker's auto-creation");
            if let Some(n) = self.lookup(topic, true).await? {
                if n != partitions {
                    tracing::warn!(
                        topic,
                        partitions = n,
                        wanted = partitions,
                        "the broker auto-created the topic with its own partition count"
                    );
                }
                return Ok(n);
            }
            return Err(Error::Topic {
                topic: topic.to_owned(),
                reason: format!(
                    "does not exist and the broker refused to create it ({reason}) and does not auto-create topics: create it with {partitions} partitions"
                ),
            });
        }
        // Wait until the new topic shows in the metadata.
        let start = Instant::now();
        loop {
            if let Some(n) = self.lookup(topic, false).await? {
                return Ok(n);
            }
            if start.elapsed() > self.config.admin_timeout {
                return Err(Error::Topic {
                    topic: topic.to_owned(),
                    reason: format!(
                        "was created but did not appear in the metadata within {:?}",
                        self.config.admin_timeout
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
