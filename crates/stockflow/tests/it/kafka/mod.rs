//! Kafka mode against a real Kafka-protocol broker (tansu, installed by
//! .ci/install), with real `stockflow serve --kafka` processes: three
//! instances, one SIGKILLed mid-stream and restarted, must end equal to
//! the reference model, and the stock-levels topic must say the same.
//!
//! `harness`: the broker and the instances; `model`: the reference and
//! how answers are held against it; `recovery`, `orders`, `catalog`,
//! `clients`: the scenarios.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use stockflow_core::{parse_body, BodyFormat, Engine, EngineConfig, Timestamp};

use crate::free_port;
use crate::reference::{location, sku, Ev, Model};

mod access;
mod amqp;
mod catalog;
mod clients;
pub mod harness;
mod model;
mod orders;
mod raw_topic;
mod recovery;
mod sink;

pub use harness::*;
use model::*;
