//! Consumer lag of the dbproc group over its request topics, with KEDA's semantics:
//! per partition `latest − committed`, never negative, a policy for partitions the group has
//! never committed on, and a cap at `partitions × target` so the HPA never asks for more
//! consumers than there are partitions.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::crd::UncommittedPartitionPolicy;
use crate::error::{Error, Result};

/// What Kafka says about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset still retained.
    pub log_start: i64,
    /// Offset the next record will get (the high watermark).
    pub log_end: i64,
    /// The group's committed offset (the next record it will read), if any.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// Records waiting for the group on this partition.
    pub fn lag(&self, policy: UncommittedPartitionPolicy) -> i64 {
        let start = match (self.committed, policy) {
            // A committed offset below the log start points at records retention already
            // deleted; counting them would be phantom lag the consumer can never work off.
            (Some(committed), _) => committed.max(self.log_start),
            (None, UncommittedPartitionPolicy::Earliest) => self.log_start,
            (None, UncommittedPartitionPolicy::Latest) => self.log_end,
        };
        // A commit can be ahead of a stale high watermark; lag is never negative.
        (self.log_end - start).max(0)
    }
}

/// The lag of one group over a set of topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    /// `(topic, partition, lag)` for every partition.
    pub partitions: Vec<(String, i32, i64)>,
}

impl ConsumerLag {
    pub fn from_offsets(
        offsets: &[(String, i32, PartitionOffsets)],
        policy: UncommittedPartitionPolicy,
    ) -> Self {
        Self {
            partitions: offsets
                .iter()
                .map(|(topic, partition, o)| (topic.clone(), *partition, o.lag(policy)))
                .collect(),
        }
    }

    /// Σ lag over all partitions.
    pub fn total(&self) -> i64 {
        self.partitions
            .iter()
            .fold(0i64, |sum, (_, _, lag)| sum.saturating_add(*lag))
    }

    /// The value the autoscaler sees: the total, capped at `partitions × per_replica` when `cap`
    /// (so `total / per_replica` never exceeds the partition count).
    pub fn metric_value(&self, per_replica: i64, cap: bool) -> i64 {
        let total = self.total();
        if !cap {
            return total;
        }
        let partitions = i64::try_from(self.partitions.len()).unwrap_or(i64::MAX);
        total.min(partitions.saturating_mul(per_replica.max(1)))
    }
}

/// Reads offsets for `group` over every partition of `topics`: one OffsetFetch for the commits
/// and one ListOffsets per partition leader for each end of the log (librdkafka groups the
/// partitions of one list by leader), instead of a request per partition. Blocks.
///
/// `group_client` is a consumer configured with the group id but never subscribed, so it reads
/// the group's commits without joining (and rebalancing) the group.
pub fn read_offsets(
    client: &BaseConsumer,
    group_client: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32, PartitionOffsets)>> {
    let partition_counts = broker_auth_kafka::partition_counts_blocking(client, topics, timeout)?;
    let list = |offset: Offset| -> Result<TopicPartitionList> {
        let mut list = TopicPartitionList::new();
        for (topic, count) in &partition_counts {
            for partition in 0..*count {
                list.add_partition_offset(topic, partition, offset)?;
            }
        }
        Ok(list)
    };
    let committed = group_client
        .committed_offsets(list(Offset::Invalid)?, timeout)
        .map_err(Error::KafkaClient)?;
    // ListOffsets takes a timestamp per partition; -2 asks for the log start, -1 for its end.
    let starts = client
        .offsets_for_times(list(Offset::Beginning)?, timeout)
        .map_err(Error::KafkaClient)?;
    let ends = client
        .offsets_for_times(list(Offset::End)?, timeout)
        .map_err(Error::KafkaClient)?;
    let mut offsets = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let read = |answer: &TopicPartitionList, end: &str| -> Result<i64> {
            let found = answer
                .find_partition(topic, partition)
                .ok_or_else(|| Error::Lag(format!("no {end} offset for {topic}/{partition}")))?;
            if let Err(error) = found.error() {
                return Err(Error::KafkaClient(error));
            }
            match found.offset() {
                Offset::Offset(offset) => Ok(offset),
                other => Err(Error::Lag(format!(
                    "{end} offset of {topic}/{partition} is {other:?}"
                ))),
            }
        };
        let committed = match element.offset() {
            Offset::Offset(offset) if offset >= 0 => Some(offset),
            _ => None,
        };
        offsets.push((
            topic.to_owned(),
            partition,
            PartitionOffsets {
                log_start: read(&starts, "start")?,
                log_end: read(&ends, "end")?,
                committed,
            },
        ));
    }
    offsets.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use UncommittedPartitionPolicy::{Earliest, Latest};

    fn offsets(log_start: i64, log_end: i64, committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets {
            log_start,
            log_end,
            committed,
        }
    }

    #[test]
    fn lag_is_end_minus_committed() {
        assert_eq!(offsets(0, 10, Some(4)).lag(Earliest), 6);
        assert_eq!(offsets(0, 10, Some(10)).lag(Latest), 0);
    }

    #[test]
    fn lag_is_never_negative() {
        assert_eq!(offsets(0, 10, Some(12)).lag(Earliest), 0);
    }

    #[test]
    fn commits_behind_retention_do_not_count_deleted_records() {
        assert_eq!(offsets(100, 110, Some(3)).lag(Earliest), 10);
    }

    #[test]
    fn uncommitted_partitions_follow_the_policy() {
        assert_eq!(offsets(5, 12, None).lag(Earliest), 7);
        assert_eq!(offsets(5, 12, None).lag(Latest), 0);
    }

    #[test]
    fn the_metric_is_capped_at_partitions_times_target() {
        let lag = ConsumerLag {
            partitions: vec![("t".into(), 0, 500), ("t".into(), 1, 0)],
        };
        assert_eq!(lag.total(), 500);
        assert_eq!(lag.metric_value(100, true), 200);
        assert_eq!(lag.metric_value(100, false), 500);
        assert_eq!(lag.metric_value(1000, true), 500);
    }
}
