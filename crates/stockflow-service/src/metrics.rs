//! Prometheus metrics: one process-wide recorder, rendered on GET /metrics.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder on first use (tests start several servers in one
/// process; they share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let latency = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let sizes = [
            1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
        ];
        let bytes = [1e3, 1e4, 1e5, 1e6, 4e6, 1.6e7, 6.4e7];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("stockflow_commit_batch_events".into()),
                    &sizes,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("stockflow_commit_record_bytes".into()),
                    &bytes,
                )
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed by an embedding program; then
        // ours only renders what it was given.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "stockflow_events_accepted_total",
        "Events committed and applied (each eventId once)."
    );
    describe_counter!(
        "stockflow_events_duplicate_total",
        "Events ignored because their eventId was already committed."
    );
    describe_counter!(
        "stockflow_events_rejected_total",
        "Invalid events, kept as dead letters."
    );
    describe_counter!(
        "stockflow_dead_letters_total",
        "Dead letters written (rejected events and refused bodies)."
    );
    describe_counter!(
        "stockflow_kafka_order_level_waits_timed_out_total",
        "Fulfils and cancels answered before a level showed their units gone or back (Kafka mode)."
    );
    describe_counter!("stockflow_checkpoints_total", "Checkpoints completed.");
    describe_counter!(
        "stockflow_webhook_deliveries_total",
        "Webhook deliveries by outcome: delivered, retried, dead_lettered, or muted (a mute in force covered the alert; not sent)."
    );
    describe_counter!(
        "stockflow_link_messages_total",
        "Messages taken over a link (a RabbitMQ queue) and acknowledged once their events were durable."
    );
    describe_counter!(
        "stockflow_link_refused_total",
        "Messages taken over a link that could not be read at all, kept whole as dead letters."
    );
    describe_gauge!(
        "stockflow_sink_connected",
        "1 while a sink (PostgreSQL) is connected, else 0."
    );
    describe_gauge!(
        "stockflow_sink_behind_bytes",
        "History bytes written and not yet committed to the sink (0: caught up)."
    );
    describe_gauge!(
        "stockflow_sink_behind_records",
        "Kafka mode: history-topic records of the owned partitions not yet committed to the sink (0: caught up)."
    );
    describe_counter!(
        "stockflow_sink_rows_total",
        "History rows committed to the sink."
    );
    describe_counter!(
        "stockflow_sink_skipped_bytes_total",
        "History the retention deleted before the sink had it."
    );
    describe_counter!(
        "stockflow_sink_alerts_skipped_total",
        "Alerts gone from the server (it keeps the newest 2,000 per partition) before the PostgreSQL sink had them."
    );
    describe_gauge!(
        "stockflow_link_connected",
        "1 while a link (a RabbitMQ queue) is connected, else 0."
    );
    // Kafka mode.
    for (name, help) in [
        (
            "stockflow_kafka_changelog_forks_total",
            "Changelog records skipped at restore because a second owner's chain wrote them.",
        ),
        (
            "stockflow_kafka_changelog_snapshots_total",
            "Partition states written into the changelog (records they cover are tombstoned).",
        ),
        (
            "stockflow_kafka_restored_from_snapshot_total",
            "Restores that started from a changelog snapshot instead of the changelog's start.",
        ),
        (
            "stockflow_kafka_restored_records_total",
            "Changelog records folded by restores.",
        ),
        (
            "stockflow_kafka_probes_total",
            "Readers moved further back after hearing nothing where placed.",
        ),
        (
            "stockflow_kafka_rereads_total",
            "Input re-read after a hole in what the broker returned.",
        ),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (
            "stockflow_kafka_lag",
            "Canonical records not yet applied, per owned partition.",
        ),
        (
            "stockflow_kafka_partitions_owned",
            "Canonical partitions this instance owns.",
        ),
        (
            "stockflow_kafka_partitions_restoring",
            "Owned partitions still restoring their state.",
        ),
        (
            "stockflow_kafka_restore_records_left",
            "Changelog records left to read by restores under way.",
        ),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(
        "stockflow_commit_latency_seconds",
        Unit::Seconds,
        "Group commit formed → durable and applied."
    );
    describe_histogram!(
        "stockflow_commit_batch_events",
        Unit::Count,
        "Events per group commit (one fsync)."
    );
    describe_histogram!(
        "stockflow_commit_record_bytes",
        Unit::Bytes,
        "Bytes per log record."
    );
    describe_histogram!(
        "stockflow_http_request_seconds",
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_counter!(
        "stockflow_http_connections_evicted_total",
        "Connections closed before sending a request head, to make room at --connections-max for a new one."
    );
    describe_counter!(
        "stockflow_http_connections_shed_total",
        "New connections closed at once because --connections-max were open, all inside a request."
    );
    describe_counter!(
        "stockflow_http_tls_handshakes_failed_total",
        "Connections to the TLS port closed without a handshake: failed, too slow, or plain HTTP (told to use https)."
    );
    describe_counter!(
        "stockflow_http_idle_connections_closed_total",
        "HTTP/2 connections closed after --read-timeout-seconds with no request open."
    );
    describe_counter!(
        "stockflow_http_connections_refused_per_address_total",
        "New connections closed at once because their client address had --connections-per-address-max open."
    );
    describe_gauge!(
        "stockflow_disk_free_bytes",
        Unit::Bytes,
        "Free space of the data directory's disk, as last looked up by a write (writes are refused under --disk-free-min-bytes)."
    );
    describe_gauge!(
        "stockflow_dead_letters_stored_bytes",
        Unit::Bytes,
        "Bytes of the dead letters held in memory (bounded by count and bytes; all are in the log)."
    );
    describe_counter!(
        "stockflow_writes_refused_total",
        "Writes refused to shed load, by reason (in_flight_requests, in_flight_bytes, queue_full, disk_full); logged at most every 10 s per reason."
    );
    describe_gauge!("stockflow_levels", "SKU-location levels held.");
    describe_gauge!(
        "stockflow_dedup_entries",
        "EventIds remembered for deduplication."
    );
    describe_gauge!(
        "stockflow_dedup_evicted_early",
        "EventIds forgotten before their retention because of the capacity bound."
    );
}
