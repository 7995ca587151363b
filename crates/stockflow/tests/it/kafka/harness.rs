//! The harness: a tansu broker on a free port, stockflow instances as
//! real processes (started, killed with SIGKILL, restarted), and the HTTP
//! helpers that wait for a cluster to settle.

use super::*;

pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// (key, payload, headers) of one record read back.
pub type Record = (Option<String>, Option<Vec<u8>>, Vec<(String, String)>);

/// A tansu broker on a free port, in memory; killed when dropped.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
    /// librdkafka settings every client of this broker needs (TLS).
    pub settings: Vec<(String, String)>,
    /// The TLS proxy in front of it, if any.
    proxy: Option<Child>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.child).chain(self.proxy.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Broker {
    pub fn start() -> Broker {
        let port = free_port();
        Broker::advertising(port, &format!("127.0.0.1:{port}"))
    }

    /// A broker that only speaks TLS: tansu (which has no TLS listener of
    /// its own) behind stunnel, advertising the proxy's address, with a
    /// certificate of a CA made here that clients are given. Every client
    /// of it, the instances' included, gets the settings.
    pub fn start_tls(dir: &Path) -> Broker {
        let stunnel = on_path("stunnel4")
            .expect("stunnel4 is not on PATH: run .ci/install (installs Debian's stunnel4)");
        let authority = crate::tls::Authority::new();
        let ca = dir.join("kafka-ca.pem");
        std::fs::write(&ca, &authority.pem).unwrap();
        let (cert, key) = authority.server("kafka");
        let (cert_file, key_file) = (dir.join("kafka.pem"), dir.join("kafka.key"));
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        let (plain, proxied) = (free_port(), free_port());
        let mut broker = Broker::advertising(plain, &format!("localhost:{proxied}"));
        let config = dir.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\noutput = {}\n[kafka]\naccept = 127.0.0.1:{proxied}\n\
                 connect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                dir.join("stunnel.log").display(),
                cert_file.display(),
                key_file.display()
            ),
        )
        .unwrap();
        broker.proxy = Some(
            Command::new(stunnel)
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("stunnel starts"),
        );
        broker.bootstrap = format!("localhost:{proxied}");
        broker.settings = vec![
            ("security.protocol".into(), "SSL".into()),
            ("ssl.ca.location".into(), ca.to_str().unwrap().to_owned()),
        ];
        let client: BaseConsumer = broker.client().create().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.fetch_metadata(None, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu behind stunnel did not answer over TLS"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    /// A client configuration for this broker.
    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    /// The arguments that give stockflow this broker's settings: a
    /// `--kafka-config-file`, as an operator passes secrets.
    pub fn kafka_args(&self) -> Vec<String> {
        if self.settings.is_empty() {
            return Vec::new();
        }
        let file = std::env::temp_dir().join(format!(
            "stockflow-test-{}-{}.properties",
            std::process::id(),
            self.bootstrap.replace([':', '.'], "-")
        ));
        let text: String = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(&file, format!("# this broker's settings\n{text}")).unwrap();
        vec![
            "--kafka-config-file".to_owned(),
            file.to_str().unwrap().to_owned(),
        ]
    }

    /// tansu listening on `port`, telling clients to find it at `advertised`.
    fn advertising(port: u16, advertised: &str) -> Broker {
        // Never skip: without the broker the test fails, saying what to run.
        // `cargo install` puts it in ~/.cargo/bin, on PATH where cargo is.
        let installed = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .map(|home| home.join("bin/tansu"))
            .filter(|p| p.is_file());
        let tansu = on_path("tansu").or(installed).expect(
            "tansu is not on PATH: run .ci/install (cargo install tansu --locked --features dynostore)",
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
            settings: Vec::new(),
            proxy: None,
        };
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.fetch_metadata(None, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    pub fn create_topics(&self) {
        let output = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["topics", "create", "--kafka", &self.bootstrap])
            .args(self.kafka_args())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn producer(&self) -> BaseProducer {
        self.client()
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Every record of `topic` from the beginning, read until the topic is
    /// quiet for two seconds (tansu's high watermarks can lag what a fetch
    /// returns, so they cannot say where the end is).
    pub fn read_all(&self, topic: &str) -> Vec<Record> {
        use rdkafka::message::Headers;
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..metadata.topics()[0].partitions().len() as i32 {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut records = Vec::new();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            quiet_since = Instant::now();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value
                                    .map(|v| String::from_utf8_lossy(v).into_owned())
                                    .unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
        records
    }

    /// The last value of every key of `topic`.
    pub fn latest(&self, topic: &str) -> BTreeMap<String, Value> {
        self.read_all(topic)
            .into_iter()
            .filter_map(|(k, v, _)| Some((k?, serde_json::from_slice(&v?).unwrap())))
            .collect()
    }

    /// The `reason` headers of `topic`'s records, counted.
    pub fn reasons(&self, topic: &str) -> BTreeMap<String, usize> {
        let mut reasons = BTreeMap::new();
        for (_, _, headers) in self.read_all(topic) {
            let reason = headers
                .into_iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| v)
                .unwrap_or_default();
            *reasons.entry(reason).or_default() += 1;
        }
        reasons
    }
}

/// A `stockflow serve --kafka` process; SIGKILLed when dropped.
pub struct Instance {
    child: Option<Child>,
    pub url: String,
    port: u16,
    dir: PathBuf,
    bootstrap: String,
    group: String,
    /// `--sourcing` for lines without a location.
    sourcing: String,
    /// More `serve` arguments.
    extra: Vec<String>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Instance {
    /// Lines without a location try WEB, then BACKUP.
    pub fn start(broker: &Broker, group: &str, dir: &Path) -> Instance {
        Instance::sourcing(broker, group, dir, "priority:WEB,BACKUP")
    }

    pub fn sourcing(broker: &Broker, group: &str, dir: &Path, sourcing: &str) -> Instance {
        Instance::with_args(broker, group, dir, sourcing, &[])
    }

    /// An instance started with more `serve` arguments.
    pub fn with_args(
        broker: &Broker,
        group: &str,
        dir: &Path,
        sourcing: &str,
        extra: &[&str],
    ) -> Instance {
        let mut extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        extra.extend(broker.kafka_args());
        Instance::at(&broker.bootstrap, group, dir, sourcing, extra)
    }

    /// An instance of the brokers at `bootstrap` (librdkafka's mock
    /// cluster, say), with more `serve` arguments.
    pub fn at(
        bootstrap: &str,
        group: &str,
        dir: &Path,
        sourcing: &str,
        extra: Vec<String>,
    ) -> Instance {
        let port = free_port();
        let mut instance = Instance {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: dir.to_owned(),
            bootstrap: bootstrap.to_owned(),
            group: group.to_owned(),
            sourcing: sourcing.to_owned(),
            extra,
        };
        instance.spawn();
        instance
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stockflow"))
            .args(["serve", "--kafka", &self.bootstrap, "--group", &self.group])
            // Small, so every test restores through changelog snapshots.
            .args(["--changelog-snapshot-every", "3000"])
            .args(["--sourcing", &self.sourcing])
            // No hold an event makes expires while a test runs.
            .args(["--order-hold-seconds", "604800"])
            // A killed member's partitions move after 10 s, not 45.
            .args(["--kafka-config", "session.timeout.ms=10000"])
            // The web UI test drives the dashboard's simulator.
            .arg("--simulator")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra)
            .env("RUST_LOG", "warn,stockflow=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the stockflow binary runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http::blocking_get(&format!("{}/healthz", self.url)).is_none() {
            assert!(
                Instant::now() < deadline,
                "instance did not come up; see {}",
                self.dir.with_extension("log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9: no flush, no snapshot, no goodbye. Its last announcement
    /// stays in the cluster view for a while: `wait_settled` waits until
    /// it is gone.
    pub fn kill(&mut self) {
        if let Some((200, cluster)) = http::blocking_get(&format!("{}/v1/cluster", self.url)) {
            if let Some(id) = cluster["instanceId"].as_str() {
                KILLED.lock().unwrap().insert(id.to_owned());
            }
        }
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    /// SIGTERM, and wait: the instance leaves the group at once, so its
    /// partitions move without waiting out the session timeout.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            child.wait().unwrap();
        }
    }
}

pub mod http {
    //! Blocking GETs with a short timeout, over the async client.
    pub fn blocking_text(url: &str) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
    }

    pub fn blocking_get(url: &str) -> Option<(u16, serde_json::Value)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .get(url)
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await
                .ok()?;
            let status = response.status().as_u16();
            Some((
                status,
                response.json().await.unwrap_or(serde_json::Value::Null),
            ))
        })
    }
}

/// GET `url`, retried while it answers 503 (a partition between owners:
/// clients are told to retry), for up to a minute.
pub fn get_settled(url: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http::blocking_get(url) {
            Some((503, _)) | None if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Some(answer) => return answer,
            None => panic!("{url} never answered"),
        }
    }
}

/// Instances killed so far (by id): a dead member's last word can make a
/// cluster look settled until it ages out, while the group still gives
/// its partitions to it.
pub static KILLED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Waits until some instance sees `members` live members, none of them
/// killed, each owning some of the partitions, every one active.
pub fn wait_settled(url: &str, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((200, c)) = http::blocking_get(&format!("{url}/v1/cluster")) {
            let active = c["partitions"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["status"] == "active"));
            let live = c["members"].as_array().cloned().unwrap_or_default();
            let killed = KILLED.lock().unwrap();
            let dead = live.iter().any(|m| {
                m["instanceId"]
                    .as_str()
                    .is_some_and(|id| killed.contains(id))
            });
            // A member that has not joined its groups yet (a start after
            // a kill waits out the session timeout) owns nothing.
            let joined = live
                .iter()
                .all(|m| m["partitions"].as_array().is_some_and(|ps| !ps.is_empty()));
            if active && !dead && joined && live.len() == members {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle with {members} members"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every entry of a level's history through `url`, newest first, read a
/// page of 1,000 at a time.
pub fn whole_history(url: &str, sku: &str, location: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut before = String::new();
    loop {
        let (status, page) = get_settled(&format!(
            "{url}/v1/stock/{sku}/{location}/history?limit=1000{before}"
        ));
        assert_eq!(status, 200, "{page}");
        entries.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["nextBefore"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => return entries,
        }
    }
}

/// The sum of a Prometheus metric's samples at `url`/metrics.
pub fn metric(url: &str, name: &str) -> f64 {
    http::blocking_text(&format!("{url}/metrics"))
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fresh directory under target/ for a test's instances (kept after a
/// failure for their logs).
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends `body` with `method` to `url`, answering (status, JSON).
pub async fn send_json(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: &Value,
) -> (u16, Value) {
    let r = client.request(method, url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits (up to 30 s) until GET `url` answers 200 with what `ok` accepts.
pub fn wait_for(url: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_settled(url);
        if status == 200 && ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {url} answered {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 30 s) until `sku` at WEB has (onHand, reserved) = `want`
/// as `url` answers: saga effects land a cycle after their decision.
pub fn wait_level(url: &str, sku: &str, want: (i64, i64)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, level) = get_settled(&format!("{url}/v1/stock/{sku}/WEB"));
        assert_eq!(status, 200, "{level}");
        let got = (
            level["onHand"].as_i64().unwrap(),
            level["reserved"].as_i64().unwrap(),
        );
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sku} via {url}: (onHand, reserved) = {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads an open stream (SSE) on a task until the text it carried so far
/// satisfies `done`, answering that text; panics, naming `what`, if the
/// stream ends or 30 s pass first. Called inside a runtime.
pub fn watch_stream(
    mut live: reqwest::Response,
    what: &'static str,
    done: impl Fn(&str) -> bool + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    assert_eq!(live.status(), 200, "{what}: the stream opens");
    tokio::spawn(async move {
        let mut seen = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !done(&seen) {
            match tokio::time::timeout_at(deadline, live.chunk()).await {
                Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                _ => panic!("the stream did not carry {what}: {seen}"),
            }
        }
        seen
    })
}
