//! RabbitMQ ingest in Kafka mode: the instance reads the queues into the
//! canonical topic, acknowledging a message once the broker has its
//! events; killed (-9) mid-stream and restarted, every message counts
//! exactly once, as in the embedded mode (`crate::amqp`).

use super::*;
use crate::amqp::{acknowledged, Scenario};

#[test]
fn rabbitmq_queues_feed_the_cluster_exactly_once_across_a_kill() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let scenario = Scenario::publish_new();
    scenario.fill_backlog();
    let dirs = scratch("kafka-amqp");
    let args = scenario.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut instance = Instance::with_args(
        &broker,
        "amqp",
        &dirs.join("i0"),
        "priority:WEB,BACKUP",
        &args,
    );
    wait_settled(&instance.url, 1);
    let links_url = format!("{}/v1/links", instance.url);
    wait_for(&links_url, "both queues connected", |l| {
        l["links"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|l| l["state"] == "connected"))
    });
    let publisher = scenario.publish_stream();
    let taken = wait_for(&links_url, "a part of the stream taken", |l| {
        acknowledged(l["links"].as_array().unwrap()) >= 600
    });
    instance.kill();
    let total = scenario.total;
    publisher.join().unwrap();
    let left = scenario.left();
    assert!(
        left > 0 && left < total,
        "the kill came mid-stream: {} acknowledged, {left} of {total} left",
        acknowledged(taken["links"].as_array().unwrap())
    );
    instance.restart();
    wait_settled(&instance.url, 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(scenario.check_caught_up(&instance.url));
}
