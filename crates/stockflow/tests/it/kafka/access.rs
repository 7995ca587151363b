//! A Kafka-mode cluster with an auth file and TLS: the instances forward
//! reads to each other over https with the cluster secret, so a user's
//! token works on any of them; the endpoints only they call refuse every
//! user token, even an admin's.

use super::*;
use stockflow_service::auth::Role;

/// GET `url` with `token`: (status, JSON).
async fn get_with(client: &reqwest::Client, url: &str, token: &str) -> (u16, Value) {
    let answer = client.get(url).bearer_auth(token).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

#[test]
fn a_secured_cluster_forwards_with_its_secret_and_keeps_its_own_endpoints_to_itself() {
    let _heavy = crate::heavy();
    let broker = Broker::start();
    broker.create_topics();
    let dirs = scratch("kafka-access");
    let tokens = dirs.join("tokens");
    let mut secret_of = BTreeMap::new();
    for (name, roles) in [("reader", vec![Role::Read]), ("admin", Role::ALL.to_vec())] {
        let secret = stockflow_service::auth::create(&tokens, name, &roles).unwrap();
        secret_of.insert(name.to_owned(), secret);
    }
    // The audit's writers: a till, a web shop, an operator.
    let writers = crate::audit::writers_with_tokens(&tokens);
    for writer in &writers {
        secret_of.insert(writer.name.clone(), writer.secret.clone().unwrap());
    }
    let cluster = dirs.join("cluster.secret");
    let cluster_secret: String = (0..64)
        .map(|_| char::from_digit(rand::random_range(0..16), 16).unwrap())
        .collect();
    std::fs::write(&cluster, format!("{cluster_secret}\n")).unwrap();
    // A certificate of a CA made here; the instances trust it for their
    // calls to each other.
    let authority = crate::tls::Authority::new();
    let (cert, key) = authority.server("instance");
    let (ca, cert_file, key_file) = (
        dirs.join("ca.pem"),
        dirs.join("cert.pem"),
        dirs.join("key.pem"),
    );
    std::fs::write(&ca, &authority.pem).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let args = [
        "--auth-file",
        tokens.to_str().unwrap(),
        "--cluster-secret-file",
        cluster.to_str().unwrap(),
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
        "--tls-ca-file",
        ca.to_str().unwrap(),
    ];
    let instances: Vec<Instance> = (0..2)
        .map(|i| {
            Instance::with_args(
                &broker,
                "access",
                &dirs.join(format!("i{i}")),
                "priority:WEB,BACKUP",
                &args,
            )
        })
        .collect();
    let https = |i: &Instance| i.url.replace("http://", "https://");
    let (a, b) = (https(&instances[0]), https(&instances[1]));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    runtime.block_on(async {
        // Two members, each owning partitions: reads of half the levels
        // on either instance are forwarded.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (status, view) =
                get_with(&client, &format!("{a}/v1/cluster"), &secret_of["reader"]).await;
            let members = view["members"].as_array().map_or(0, Vec::len);
            let active = view["partitions"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["status"] == "active"));
            if status == 200 && members == 2 && active {
                // They know each other by their https URLs.
                let urls: Vec<&str> = view["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|m| m["url"].as_str())
                    .collect();
                assert_eq!(urls.len(), 2, "{view}");
                assert!(urls.iter().all(|u| u.starts_with("https://")), "{view}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group did not settle: {status} {view}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let events: Vec<Value> = (0..40)
            .map(|i| {
                serde_json::json!({"eventId": format!("acc-{i}"), "eventType": "RECEIPT",
                    "sku": format!("ACC-{i}"), "locationId": "S1", "quantity": i + 1})
            })
            .collect();
        let posted = client
            .post(format!("{a}/v1/events"))
            .bearer_auth(&secret_of["till"])
            .json(&events)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 200, "{}", posted.text().await.unwrap());
        // Every level, read on the other instance with the reader's
        // token: the ones it does not own come through its owner.
        for i in 0..40 {
            let url = format!("{b}/v1/stock/ACC-{i}/S1");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (status, level) = get_with(&client, &url, &secret_of["reader"]).await;
                assert!(status != 401 && status != 403, "{url}: {status} {level}");
                if status == 200 && level["onHand"] == i + 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "{url}: {status} {level}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The instances' own endpoints: not for users, however trusted.
        let internal = format!("{a}/v1/internal/orders/none");
        let no_token = client.get(&internal).send().await.unwrap().status();
        assert_eq!(no_token, 401);
        for user in ["reader", "admin"] {
            let (status, body) = get_with(&client, &internal, &secret_of[user]).await;
            assert_eq!(status, 403, "{user}: {body}");
        }
        let (status, body) = get_with(&client, &internal, &cluster_secret).await;
        assert!(
            status != 401 && status != 403,
            "the cluster secret: {status} {body}"
        );
        // And the cluster secret is no user token: it cannot write.
        let posted = client
            .post(format!("{a}/v1/events"))
            .bearer_auth(&cluster_secret)
            .json(&events[0])
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 403);
        // Who changed what, as the embedded mode records it; the writes
        // go to one instance, the reads to the other.
        let [till, shop, ops] = &writers;
        crate::audit::who_did_what(
            &crate::audit::Target {
                client: &client,
                url: &b,
                tag: "kafka",
            },
            till,
            shop,
            ops,
        )
        .await;
    });
    drop(instances);
    // The instance that took the operator's replay and discard logged
    // who resolved the letters (and its DLQ markers say so).
    let log = std::fs::read_to_string(dirs.join("i1").with_extension("log")).unwrap();
    assert!(crate::audit::log_names_resolver(&log, "ops"), "{log}");
    for i in 0..2 {
        let log =
            std::fs::read_to_string(dirs.join(format!("i{i}")).with_extension("log")).unwrap();
        assert!(
            !log.contains(&cluster_secret),
            "the cluster secret in a log"
        );
        for secret in secret_of.values() {
            assert!(!log.contains(secret.as_str()), "a token in a log");
        }
    }
}
