//! The consumer thread: polls Kafka, cuts micro-batches by rows and latency, and hands them
//! over a channel that holds one batch. When the channel is full it pauses its partitions
//! (memory stays bounded when inference is slower than Kafka) but keeps polling, so
//! rebalances are still served.
//!
//! In a pipeline, positions come from the index, not from Kafka: on every assignment the
//! consumer asks a [`PositionStore`] where each partition stands and seeks there; on a
//! revocation it waits until every batch it handed over is committed (or abandoned), so a
//! partition changes hands only at a committed position.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::options::{End, KafkaOptions, Start};
use super::record::Record;
use crate::error::{Error, Result};
use crate::index::SourceOffsets;

/// Records handed to the pipeline in one piece.
#[derive(Debug)]
pub struct MicroBatch {
    /// Increasing per consumer; acknowledge with [`Consumer::ack`].
    pub seq: u64,
    pub records: Vec<Record>,
    /// Where every partition assigned to this consumer stands once this batch is applied:
    /// the offsets to store with it.
    pub positions: SourceOffsets,
    /// Where those partitions stood before this batch (the previous batch's `positions`, or
    /// the stored positions at assignment); a partition absent here had no position. A
    /// commit of this batch must find the index still there (see `index::fence`).
    pub starts: SourceOffsets,
}

/// Where a pipeline resumes each partition (the offsets stored in the index).
pub trait PositionStore: Send + Sync {
    /// Blocking; called from the consumer thread on each assignment.
    fn positions(&self, partitions: &[(String, i32)]) -> Result<SourceOffsets>;
}

/// How the consumer finds and tracks its partitions.
pub enum Mode {
    /// Join the group; resume from the store (or, without one, from the group's committed
    /// offsets); report progress to the group after acks.
    Pipeline(Option<Arc<dyn PositionStore>>),
    /// Join the group; start per the table's `start` option; commit nothing.
    Stream,
    /// Read every partition up to its high watermark at start, then end.
    Snapshot,
}

#[derive(Default)]
struct AckState {
    /// Highest sequence number committed or abandoned by the pipeline.
    acked: u64,
    /// Positions to report to the consumer group.
    to_commit: Option<SourceOffsets>,
    /// Set when the pipeline stops: nothing more will be acknowledged.
    closed: bool,
}

struct Shared {
    stop: AtomicBool,
    acks: Mutex<AckState>,
    acked: Condvar,
    /// Sequence number of the last batch handed over.
    sent: AtomicU64,
    /// Rebalance events for the polling loop, in order.
    events: Mutex<Vec<Event>>,
    /// How long a revocation waits for in-flight batches.
    revoke_wait: Duration,
    /// Whether the partitions are paused because the pipeline is behind.
    paused: AtomicBool,
    /// Records fetched but not yet handed to the pipeline (pending + the ready batch).
    held: AtomicUsize,
}

enum Event {
    Assigned(SourceOffsets, Vec<(String, i32)>),
    Revoked,
    Failed(Error),
}

impl Shared {
    fn push(&self, e: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(e);
        }
    }

    /// Blocks until every handed-over batch is acknowledged, the pipeline closes, or the
    /// timeout passes.
    fn wait_for_acks(&self) {
        let sent = self.sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + self.revoke_wait;
        let Ok(mut state) = self.acks.lock() else {
            return;
        };
        while state.acked < sent && !state.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    sent,
                    acked = state.acked,
                    "revoking partitions with batches still in flight"
                );
                return;
            }
            state = match self.acked.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(_) => return,
            };
        }
    }
}

struct Context {
    shared: Arc<Shared>,
    /// Batches are acknowledged: revocations wait for the ones in flight.
    pipeline: bool,
    store: Option<Arc<dyn PositionStore>>,
    start: Start,
}

impl ClientContext for Context {
    /// librdkafka's periodic statistics (`statistics.interval.ms`): consumer lag per
    /// partition, as a Prometheus gauge.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 is the internal "unassigned" partition and lags of unowned partitions.
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                set_lag(topic, *partition, p.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                let mut resolved = SourceOffsets::default();
                if let Some(store) = &self.store {
                    match store.positions(&parts) {
                        Ok(p) => resolved = p,
                        Err(e) => {
                            self.shared.push(Event::Failed(e));
                            let _ = consumer.assign(&TopicPartitionList::new());
                            return;
                        }
                    }
                }
                for (topic, partition) in &parts {
                    let offset = match resolved.get(topic, *partition) {
                        Some(o) => Offset::Offset(o),
                        None => match self.start {
                            Start::Committed => Offset::Stored,
                            Start::Earliest => Offset::Beginning,
                            Start::Latest => Offset::End,
                        },
                    };
                    let _ = tpl.set_partition_offset(topic, *partition, offset);
                }
                tracing::info!(?parts, "partitions assigned");
                if let Err(e) = consumer.assign(tpl) {
                    self.shared.push(Event::Failed(Error::Kafka(format!(
                        "assigning partitions: {e}"
                    ))));
                    return;
                }
                // librdkafka keeps an application pause on a partition through unassign and
                // assign: a partition paused for backpressure before the rebalance and
                // assigned here again would never be fetched, while the polling loop (whose
                // batches the revocation dropped) believes nothing is paused.
                if let Err(e) = consumer.resume(tpl) {
                    self.shared.push(Event::Failed(Error::Kafka(format!(
                        "resuming assigned partitions: {e}"
                    ))));
                    return;
                }
                self.shared.paused.store(false, Ordering::SeqCst);
                self.shared.push(Event::Assigned(resolved, parts));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if self.pipeline {
                    self.shared.wait_for_acks();
                }
                self.shared.push(Event::Revoked);
                tracing::info!("partitions revoked");
                let _ = consumer.unassign();
            }
            other => {
                tracing::warn!(?other, "rebalance error");
                self.shared.push(Event::Revoked);
                let _ = consumer.unassign();
            }
        }
    }
}

/// A running consumer thread and the receiving end of its batches.
pub struct Consumer {
    rx: mpsc::Receiver<Result<MicroBatch>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Connects and starts the consumer thread.
    pub fn start(options: &KafkaOptions, mode: Mode) -> Result<Self> {
        let mut config = ClientConfig::new();
        for (k, v) in &options.client {
            config.set(k, v);
        }
        let snapshot = matches!(mode, Mode::Snapshot) || options.end == End::LatestAtStart;
        if !options.client.contains_key("group.id") {
            if snapshot {
                config.set(
                    "group.id",
                    format!("semflow-snapshot-{}", std::process::id()),
                );
            } else {
                return Err(Error::InvalidArgument(format!(
                    "STORED AS KAFKA {}: an unbounded read needs option 'group.id' (or 'end' 'latest-at-start' for a snapshot)",
                    options.topic
                )));
            }
        }
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        config.set("enable.partition.eof", "false");
        // Bounded prefetch: what librdkafka buffers ahead of the pipeline.
        set_default(&mut config, options, "queued.max.messages.kbytes", "8192");
        set_default(&mut config, options, "statistics.interval.ms", "5000");
        // A subscribed topic created after the worker started (or given more partitions) is
        // noticed at the next metadata refresh: every 10 s rather than librdkafka's 5 min.
        set_default(
            &mut config,
            options,
            "topic.metadata.refresh.interval.ms",
            "10000",
        );
        set_default(
            &mut config,
            options,
            "auto.offset.reset",
            match options.start {
                Start::Latest => "latest",
                _ => "earliest",
            },
        );
        let revoke_wait = options
            .client
            .get("max.poll.interval.ms")
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(300));
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            acks: Mutex::new(AckState::default()),
            acked: Condvar::new(),
            sent: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            revoke_wait,
            paused: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        });
        let store = match &mode {
            Mode::Pipeline(store) => store.clone(),
            _ => None,
        };
        let context = Context {
            shared: shared.clone(),
            pipeline: matches!(mode, Mode::Pipeline(_)),
            store,
            start: options.start,
        };
        let consumer: BaseConsumer<Context> = config.create_with_context(context).map_err(|e| {
            Error::Kafka(format!("creating the consumer for {}: {e}", options.topic))
        })?;
        let end = if snapshot {
            Some(assign_snapshot(&consumer, options)?)
        } else {
            consumer
                .subscribe(&[options.topic.as_str()])
                .map_err(|e| Error::Kafka(format!("subscribing to {}: {e}", options.topic)))?;
            None
        };
        let (tx, rx) = mpsc::channel(1);
        let loop_state = Loop {
            consumer,
            options: options.clone(),
            shared: shared.clone(),
            tx,
            end,
            report_progress: matches!(mode, Mode::Pipeline(_)),
        };
        let thread = std::thread::Builder::new()
            .name(format!("kafka-{}", options.topic))
            .spawn(move || loop_state.run())
            .map_err(|e| Error::Kafka(format!("starting the consumer thread: {e}")))?;
        Ok(Self {
            rx,
            shared,
            thread: Some(thread),
        })
    }

    /// The next micro-batch; `None` when a bounded read is done or the consumer stopped.
    pub async fn next(&mut self) -> Option<Result<MicroBatch>> {
        self.rx.recv().await
    }

    /// The batch `seq` (and every earlier one) is durable, or abandoned; `positions` are
    /// reported to the consumer group as progress.
    pub fn ack(&self, seq: u64, positions: Option<SourceOffsets>) {
        if let Ok(mut state) = self.shared.acks.lock() {
            state.acked = state.acked.max(seq);
            if positions.is_some() {
                state.to_commit = positions;
            }
        }
        self.shared.acked.notify_all();
    }

    /// Whether the consumer has paused its partitions because the pipeline is behind.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// Records fetched from Kafka and held by semflow, not yet handed over (the channel's
    /// one batch is not counted).
    pub fn held_records(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Stops the thread. Batches not yet acknowledged are abandoned: whoever reads the
    /// partitions next starts from the positions stored in the index.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Ok(mut state) = self.shared.acks.lock() {
            state.closed = true;
        }
        self.shared.acked.notify_all();
        self.rx.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set_default(config: &mut ClientConfig, options: &KafkaOptions, key: &str, value: &str) {
    if !options.client.contains_key(key) {
        config.set(key, value);
    }
}

/// Assigns every partition of the topic from its start position; returns the high
/// watermarks to stop at.
fn assign_snapshot(
    consumer: &BaseConsumer<Context>,
    options: &KafkaOptions,
) -> Result<BTreeMap<i32, i64>> {
    let timeout = Duration::from_secs(10);
    let topic = options.topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::Kafka(format!("reading metadata of {topic}: {e}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(Error::Kafka(format!(
            "topic {topic} does not exist or has no partitions"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    let mut end = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(|e| Error::Kafka(format!("reading offsets of {topic}/{p}: {e}")))?;
        let offset = match options.start {
            Start::Earliest => Offset::Offset(low),
            Start::Latest => Offset::Offset(high),
            Start::Committed => Offset::Stored,
        };
        tpl.add_partition_offset(topic, *p, offset)
            .map_err(|e| Error::Kafka(e.to_string()))?;
        end.insert(*p, high);
    }
    if options.start == Start::Committed {
        // Resolve "stored" ourselves: partitions without a committed offset start at the
        // earliest, and partitions already at their end are done before reading.
        let committed = consumer
            .committed_offsets(tpl.clone(), timeout)
            .map_err(|e| Error::Kafka(format!("reading committed offsets of {topic}: {e}")))?;
        tpl = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, e.partition(), offset)
                .map_err(|e| Error::Kafka(e.to_string()))?;
            if let Offset::Offset(o) = e.offset() {
                if end.get(&e.partition()).is_some_and(|h| o >= *h) {
                    end.insert(e.partition(), o);
                }
            }
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| Error::Kafka(format!("assigning {topic}: {e}")))?;
    Ok(end)
}

struct Loop {
    consumer: BaseConsumer<Context>,
    options: KafkaOptions,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Result<MicroBatch>>,
    /// Snapshot reads: the offset each partition ends at.
    end: Option<BTreeMap<i32, i64>>,
    report_progress: bool,
}

/// The polling loop's state between two polls: records gathered for the next micro-batch,
/// the batch waiting for room in the channel, and where each partition stands.
#[derive(Default)]
struct Cursor {
    seq: u64,
    pending: Vec<Record>,
    /// When the first record of `pending` arrived.
    first_at: Option<Instant>,
    /// A cut batch the channel had no room for yet.
    ready: Option<MicroBatch>,
    positions: SourceOffsets,
    /// Where the next batch starts: `positions` as of the last cut or assignment.
    starts: SourceOffsets,
    assigned: HashSet<(String, i32)>,
    paused: bool,
    /// Snapshot reads: partitions read to their end.
    done: HashSet<i32>,
}

impl Cursor {
    /// How long the next poll may wait: a waiting batch retries soon, an open batch only
    /// until its window closes.
    fn poll_timeout(&self, batch_latency: Duration) -> Duration {
        match (&self.ready, self.first_at) {
            (Some(_), _) => Duration::from_millis(50),
            (None, Some(t)) => batch_latency
                .saturating_sub(t.elapsed())
                .max(Duration::from_millis(1)),
            (None, None) => Duration::from_millis(100),
        }
    }

    /// Applies a rebalance; a failed group is returned as the error to report.
    fn rebalanced(&mut self, event: Event) -> Option<Error> {
        match event {
            Event::Assigned(resolved, parts) => {
                self.positions.fill_from(&resolved);
                self.starts.fill_from(&resolved);
                self.assigned.extend(parts);
                self.paused = false;
            }
            Event::Revoked => {
                // Eager rebalancing revokes everything; uncommitted records are re-read by
                // whoever gets the partitions.
                self.pending.clear();
                self.first_at = None;
                self.ready = None;
                self.positions = SourceOffsets::default();
                self.starts = SourceOffsets::default();
                self.assigned.clear();
                self.paused = false;
            }
            Event::Failed(e) => return Some(e),
        }
        None
    }

    /// Adds a polled record; snapshot reads (`end`) skip records past a partition's end
    /// and note partitions read through.
    fn take(&mut self, record: Record, end: Option<&BTreeMap<i32, i64>>) {
        let p = record.partition;
        if let Some(end) = end {
            let high = end.get(&p).copied().unwrap_or(0);
            if record.offset + 1 >= high {
                self.done.insert(p);
            }
            if record.offset >= high {
                return;
            }
        }
        self.positions.set(&record.topic, p, record.offset + 1);
        self.first_at.get_or_insert_with(Instant::now);
        self.pending.push(record);
    }

    /// Cuts the pending records into the next batch when it is full, its window has closed,
    /// or a snapshot read is `finished`.
    fn cut(&mut self, options: &KafkaOptions, finished: bool) {
        let full = self.pending.len() >= options.batch_rows;
        let due = self
            .first_at
            .is_some_and(|t| t.elapsed() >= options.batch_latency);
        if self.ready.is_some() || self.pending.is_empty() || !(full || due || finished) {
            return;
        }
        self.seq += 1;
        let mut current = self.positions.clone();
        current.retain(|t, p| self.assigned.contains(&(t.to_string(), p)));
        let starts = std::mem::replace(&mut self.starts, current.clone());
        self.ready = Some(MicroBatch {
            seq: self.seq,
            records: std::mem::take(&mut self.pending),
            positions: current,
            starts,
        });
        self.first_at = None;
    }

    /// Records held in memory (pending and waiting).
    fn held(&self) -> usize {
        self.pending.len() + self.ready.as_ref().map_or(0, |b| b.records.len())
    }
}

/// Subscribed consumers of this process still waiting for their group to assign them
/// partitions (a join takes up to `session.timeout.ms` while a departed member is waited for):
/// the statement spinner says so instead of sitting silent.
static JOINING: AtomicUsize = AtomicUsize::new(0);

/// How many consumers of this process are waiting for their group's assignment.
pub fn consumers_joining() -> usize {
    JOINING.load(Ordering::Relaxed)
}

/// Counts one consumer in [`JOINING`] until its first assignment (or its end).
struct Joining(bool);

impl Joining {
    fn start(subscribed: bool) -> Self {
        if subscribed {
            JOINING.fetch_add(1, Ordering::Relaxed);
        }
        Self(subscribed)
    }

    fn assigned(&mut self) {
        if std::mem::take(&mut self.0) {
            JOINING.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        self.assigned();
    }
}

impl Loop {
    fn run(self) {
        let mut cursor = Cursor::default();
        let mut transient = Throttled::default();
        // A subscribed topic that does not exist yet: since when it has been waited for.
        let mut missing_since: Option<Instant> = None;
        let mut joining = Joining::start(self.end.is_none());
        if let Some(end) = &self.end {
            for (p, high) in end {
                cursor.assigned.insert((self.options.topic.clone(), *p));
                if let Ok(Some(pos)) = self.start_position(*p) {
                    if pos >= *high {
                        cursor.done.insert(*p);
                    }
                }
            }
        }
        loop {
            if self.shared.stop.load(Ordering::SeqCst) || !self.send_ready(&mut cursor) {
                break;
            }
            if self.report_progress {
                self.commit_progress();
            }
            let polled = self
                .consumer
                .poll(cursor.poll_timeout(self.options.batch_latency))
                .map(|r| r.map(|m| Record::from_message(&m)));
            // Rebalance callbacks ran inside poll: apply them before the polled record.
            let events = self
                .shared
                .events
                .lock()
                .map(|mut e| std::mem::take(&mut *e))
                .unwrap_or_default();
            for event in events {
                if let Some(e) = cursor.rebalanced(event) {
                    let _ = self.tx.blocking_send(Err(e));
                    return;
                }
            }
            if !cursor.assigned.is_empty() {
                joining.assigned();
            }
            match polled {
                Some(Ok(record)) => cursor.take(record, self.end.as_ref()),
                Some(Err(e)) if self.topic_missing(&e, &cursor) => {
                    let since = *missing_since.get_or_insert_with(|| {
                        tracing::warn!(
                            "kafka: topic {} does not exist (yet); waiting up to {} s for it to be created (option 'topic_wait_s')",
                            self.options.topic,
                            self.options.topic_wait.as_secs()
                        );
                        Instant::now()
                    });
                    if since.elapsed() >= self.options.topic_wait {
                        let _ = self.tx.blocking_send(Err(Error::Kafka(format!(
                            "topic {} does not exist (waited {} s, option 'topic_wait_s'): create it, or correct the table's LOCATION",
                            self.options.topic,
                            self.options.topic_wait.as_secs()
                        ))));
                        return;
                    }
                }
                Some(Err(e)) if fatal(&e) => {
                    let _ = self.tx.blocking_send(Err(Error::Kafka(format!(
                        "consuming {}: {e}",
                        self.options.topic
                    ))));
                    return;
                }
                Some(Err(e)) => transient.warn(&e),
                None => {}
            }
            let finished = self
                .end
                .as_ref()
                .is_some_and(|end| end.keys().all(|p| cursor.done.contains(p)));
            cursor.cut(&self.options, finished);
            self.shared.held.store(cursor.held(), Ordering::SeqCst);
            if finished && cursor.held() == 0 {
                break;
            }
        }
        if let Some(batch) = cursor.ready.take() {
            if self.end.is_some() {
                let _ = self.tx.blocking_send(Ok(batch));
            }
        }
    }

    /// A subscription's topic does not exist (yet): nothing is assigned and the broker says
    /// the topic is unknown. A topic created later is assigned at the next metadata refresh.
    fn topic_missing(&self, e: &KafkaError, cursor: &Cursor) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        self.end.is_none()
            && cursor.assigned.is_empty()
            && matches!(
                e.rdkafka_error_code(),
                Some(C::UnknownTopicOrPartition | C::UnknownTopic)
            )
    }

    /// Hands the waiting batch to the channel if it has room: the source pauses while it has
    /// none (backpressure) and resumes once a batch went through. False when the receiver is
    /// gone.
    fn send_ready(&self, cursor: &mut Cursor) -> bool {
        let Some(batch) = cursor.ready.take() else {
            return true;
        };
        let seq = batch.seq;
        match self.tx.try_send(Ok(batch)) {
            Ok(()) => {
                self.shared.sent.store(seq, Ordering::SeqCst);
                if cursor.paused {
                    self.set_paused(false);
                    cursor.paused = false;
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(Ok(batch))) => {
                cursor.ready = Some(batch);
                // Re-pause every time: a rebalance may have added partitions.
                self.set_paused(true);
                cursor.paused = true;
                true
            }
            Err(_) => false,
        }
    }

    fn start_position(&self, partition: i32) -> Result<Option<i64>> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| Error::Kafka(e.to_string()))?;
        Ok(assignment
            .find_partition(&self.options.topic, partition)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }

    fn set_paused(&self, pause: bool) {
        self.shared.paused.store(pause, Ordering::SeqCst);
        metrics::gauge!("semflow_kafka_paused").set(if pause { 1.0 } else { 0.0 });
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(e) = result {
            tracing::debug!("kafka pause/resume: {e}");
        }
    }

    /// Reports acknowledged positions to the consumer group (for lag tools; the index
    /// holds the authoritative positions).
    fn commit_progress(&self) {
        let to_commit = self
            .shared
            .acks
            .lock()
            .ok()
            .and_then(|mut s| s.to_commit.take());
        let Some(offsets) = to_commit else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in offsets.iter() {
            let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!("kafka progress commit: {e}");
            }
        }
        self.report_lag(&offsets);
    }

    /// Consumer lag of the committed positions, against each partition's high watermark as of
    /// the last fetch response: published from the first commit on, where librdkafka's
    /// statistics come only every `statistics.interval.ms` (they keep it current while nothing
    /// commits). No broker round trip: the poll loop is not held up.
    fn report_lag(&self, committed: &SourceOffsets) {
        for (topic, partition, next) in committed.iter() {
            if let Some(high) = self.cached_high_watermark(topic, partition) {
                set_lag(topic, partition, (high - next).max(0));
            }
        }
    }

    /// The partition's high watermark as librdkafka last saw it (none before a fetch).
    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives; librdkafka reads
        // the NUL-terminated topic name and writes the two out-parameters, nothing else
        // (rd_kafka_get_watermark_offsets queries no broker).
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
    }
}

/// The `semflow_kafka_consumer_lag` gauge of one partition, from librdkafka's statistics or
/// a progress commit.
fn set_lag(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(
        "semflow_kafka_consumer_lag",
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}

/// Transient client errors (a broker away: librdkafka reports it on every poll), logged at
/// most every [`Throttled::EVERY`] with the number left out.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    left_out: u64,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn warn(&mut self, e: &KafkaError) {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.left_out += 1;
            return;
        }
        match std::mem::take(&mut self.left_out) {
            0 => tracing::warn!("kafka: {e}"),
            n => tracing::warn!(
                "kafka: {e} (and {n} more errors in the last {:?})",
                Self::EVERY
            ),
        }
        self.last = Some(Instant::now());
    }
}

fn fatal(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::Fatal
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::TopicAuthorizationFailed
                | C::GroupAuthorizationFailed
                | C::UnknownTopicOrPartition
                | C::InvalidConfig
        )
    )
}
