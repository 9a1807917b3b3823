//! TLS on real processes, with certificates made in the test (rcgen):
//! the `baremetal` CLI over HTTPS against all-in-one, a renewed API
//! certificate served without a restart, the conductor's HTTP root over
//! HTTPS, and a cluster (real etcd and PostgreSQL) whose API and conductors
//! speak mutual TLS — conductors refusing clients without a certificate
//! of the cluster's CA.

use std::time::{Duration, Instant};

use ferric_tests::cluster::{Cluster, status_at};
use ferric_tests::tls::{TestCa, served_certificate};
use ferric_tests::{Baremetal, Etcd, EtcdTls, Ferric, PgTls, Postgres, free_port};
use serde_json::json;

fn https_client(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_over_https_a_renewed_certificate_is_served_and_the_http_root_is_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "lab");
    let api_cert = ca.issue("api", &["127.0.0.1", "localhost"]);
    let root_cert = ca.issue("httproot", &["127.0.0.1"]);
    let http_port = free_port();
    let (cert, key) = (api_cert.cert.display().to_string(), api_cert.key.display().to_string());
    let (rcert, rkey) = (root_cert.cert.display().to_string(), root_cert.key.display().to_string());
    let ca_file = ca.ca_file.display().to_string();
    let http_listen = format!("127.0.0.1:{http_port}");
    let ferric = Ferric::start(
        None,
        &[
            ("FERRIC_API__TLS_CERT_FILE", &cert),
            ("FERRIC_API__TLS_KEY_FILE", &key),
            ("FERRIC_CONDUCTOR__HTTP_LISTEN", &http_listen),
            ("FERRIC_CONDUCTOR__HTTP_TLS_CERT_FILE", &rcert),
            ("FERRIC_CONDUCTOR__HTTP_TLS_KEY_FILE", &rkey),
            // the conductor's start-up probe of its own HTTP root checks it
            ("FERRIC_CONDUCTOR__HTTP_TLS_CA_FILE", &ca_file),
        ],
    );
    let https = format!("https://127.0.0.1:{}", ferric.port);
    let addr = format!("127.0.0.1:{}", ferric.port);
    // the API answers only once the conductor is up: wait for it over https
    let client = https_client(&ca.pem);
    let start = Instant::now();
    while client
        .get(format!("{https}/v1/conductors"))
        .header("X-OpenStack-Ironic-API-Version", "1.115")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(start.elapsed() < Duration::from_secs(30), "the API did not answer over https");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // the real CLI, trusting the lab CA
    // links name the scheme the request came by
    let v1: serde_json::Value = client.get(format!("{https}/v1")).send().await.unwrap().json().await.unwrap();
    assert!(v1["links"][0]["href"].as_str().unwrap().starts_with(&format!("{https}/v1")), "{v1}");

    let bm = Baremetal::new(&https).with_cacert(&ca.ca_file);
    assert!(bm.ok(&["driver", "list"]).contains("fake-hardware"));
    let info = json!({
        "ipmi_password": "pw-top",
        "redfish_username": "admin",
        "bmcs": [{"address": "10.0.0.1", "password": "pw-in-array"}, [{"snmp_auth_key": "k-nested"}]],
    });
    let bmcs = format!("bmcs={}", info["bmcs"]);
    let node = bm.json(&[
        "node",
        "create",
        "--driver",
        "fake-hardware",
        "--name",
        "tls-n1",
        "--driver-info",
        "ipmi_password=pw-top",
        "--driver-info",
        "redfish_username=admin",
        "--driver-info",
        &bmcs,
    ]);
    let uuid = node["uuid"].as_str().unwrap().to_string();
    let shown = bm.json(&["node", "show", &uuid, "--fields", "driver_info"]);
    let text = shown.to_string();
    for secret in ["pw-top", "pw-in-array", "k-nested"] {
        assert!(!text.contains(secret), "{secret} shown by the API: {text}");
    }
    assert_eq!(shown["driver_info"]["redfish_username"], "admin", "{text}");
    assert_eq!(shown["driver_info"]["bmcs"][0]["password"], "******", "{text}");
    assert_eq!(shown["driver_info"]["bmcs"][1][0]["snmp_auth_key"], "******", "{text}");

    // without the CA the CLI refuses the server; plain HTTP gets no answer
    let err = Baremetal::new(&https).fails(&["driver", "list"]);
    assert!(err.to_lowercase().contains("certificate") || err.contains("SSL"), "{err}");
    let plain = ferric_tests::http().get(format!("http://{addr}/v1")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP must not be served");

    // renewal: new files renamed over the old ones; the new certificate is
    // served within the reload check, without a restart
    assert_eq!(served_certificate(&addr, "127.0.0.1", &ca.pem).await.unwrap(), api_cert.der);
    let renewed = ca.issue("api-renewed", &["127.0.0.1", "localhost"]);
    std::fs::rename(&renewed.key, &api_cert.key).unwrap();
    std::fs::rename(&renewed.cert, &api_cert.cert).unwrap();
    let start = Instant::now();
    loop {
        let served = served_certificate(&addr, "127.0.0.1", &ca.pem).await.unwrap();
        if served == renewed.der {
            break;
        }
        assert_eq!(served, api_cert.der, "neither the old nor the renewed certificate was served");
        assert!(start.elapsed() < Duration::from_secs(15), "the renewed certificate was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(bm.ok(&["node", "list"]).contains("tls-n1"), "the CLI works with the renewed certificate");

    // the conductor's HTTP root (boot media for BMCs) is HTTPS: it started
    // only because its own probe fetched an object there with the CA
    let health = client.get(format!("https://{http_listen}/healthz")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    assert!(
        ferric_tests::http().get(format!("http://{http_listen}/healthz")).send().await.is_err(),
        "the HTTP root must not answer plain HTTP"
    );
    let other = TestCa::new(dir.path(), "stranger");
    assert!(
        https_client(&other.pem).get(format!("https://{http_listen}/healthz")).send().await.is_err(),
        "a client trusting another CA must refuse the HTTP root"
    );
}

/// `psql` against `port` with libpq `options`; its output or its error.
fn psql(port: u16, options: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .arg(format!("host=127.0.0.1 port={port} user=postgres dbname=ferric_cluster {options}"))
        .args(["-Atc", sql])
        .output()
        .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_runs_on_mutual_tls_etcd_tls_and_postgres_tls_and_conductors_refuse_other_clients() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "cluster");
    // one certificate for every process of this test: conductors
    // advertise https://127.0.0.1:<port>, so it names 127.0.0.1
    let cert = ca.issue("grpc", &["127.0.0.1", "localhost"]);
    let (ca_file, cert_file, key_file) =
        (ca.ca_file.display().to_string(), cert.cert.display().to_string(), cert.key.display().to_string());
    // etcd: TLS only, client certificates of its own CA required
    let etcd_ca = TestCa::new(certs.path(), "etcd");
    let (etcd_server, etcd_client) =
        (etcd_ca.issue("etcd-server", &["127.0.0.1"]), etcd_ca.issue("etcd-client", &["ferric"]));
    let etcd = Etcd::start_tls(EtcdTls {
        ca: etcd_ca.ca_file.clone(),
        cert: etcd_server.cert,
        key: etcd_server.key,
        client_cert: etcd_client.cert.clone(),
        client_key: etcd_client.key.clone(),
    });
    assert!(etcd.endpoint.starts_with("https://"));
    // PostgreSQL: ssl = on, TCP over TLS only; processes check its
    // certificate (verify-full: of the CA, naming 127.0.0.1)
    let pg_ca = TestCa::new(certs.path(), "pg");
    let pg_server = pg_ca.issue("pg-server", &["127.0.0.1"]);
    let pg = Postgres::start_tls(PgTls { cert: &pg_server.cert, key: &pg_server.key });
    let plain_db = pg.database("ferric_cluster");
    let db_url = format!("{plain_db}?sslmode=verify-full&sslrootcert={}", pg_ca.ca_file.display());
    let e = psql(pg.port(), "sslmode=disable", "select 1").unwrap_err();
    assert!(e.contains("no encryption") || e.contains("rejects"), "PostgreSQL must refuse plaintext: {e}");
    let (etcd_ca_file, etcd_cert, etcd_key) = (
        etcd_ca.ca_file.display().to_string(),
        etcd_client.cert.display().to_string(),
        etcd_client.key.display().to_string(),
    );
    let env = [
        ("FERRIC_GRPC__CA_FILE", ca_file.as_str()),
        ("FERRIC_GRPC__CERT_FILE", &cert_file),
        ("FERRIC_GRPC__KEY_FILE", &key_file),
        ("FERRIC_MEMBERSHIP__ETCD_CA_FILE", &etcd_ca_file),
        ("FERRIC_MEMBERSHIP__ETCD_CERT_FILE", &etcd_cert),
        ("FERRIC_MEMBERSHIP__ETCD_KEY_FILE", &etcd_key),
    ];
    let endpoints = vec![etcd.endpoint.clone(); 2];
    let cl = Cluster::start_on(etcd, endpoints, pg, db_url.clone(), &db_url, 6, &env);
    cl.wait_conductors(2).await;

    // everything the API does on a node goes over mutual TLS
    // the ring places nodes by their random UUIDs, so 8 land on one
    // conductor once in 128 runs: add a few until both own some
    let mut uuids = cl.create_nodes("mtls-", 8, json!({"deploy_password": "pw-mtls"})).await;
    for round in 0..5 {
        let nodes = cl.nodes().await;
        let owners: std::collections::BTreeSet<String> =
            uuids.iter().map(|u| nodes[u]["conductor"].as_str().unwrap_or_default().to_string()).collect();
        if owners.len() == 2 {
            break;
        }
        assert!(round < 4, "nodes spread over both conductors: {owners:?} own {} nodes", uuids.len());
        uuids.extend(cl.create_nodes(&format!("mtls{round}-"), 4, json!({"deploy_password": "pw-mtls"})).await);
    }
    cl.drive(&uuids, "manage", "manageable", Duration::from_secs(60)).await;
    cl.drive(&uuids, "provide", "available", Duration::from_secs(60)).await;
    for u in &uuids {
        let v = cl.ok(reqwest::Method::GET, &format!("/v1/nodes/{u}/validate"), None).await;
        assert_eq!(v["power"]["result"], true, "{v}");
        // a PATCH's reply comes from the conductor: no secret in it
        let p = cl
            .ok(
                reqwest::Method::PATCH,
                &format!("/v1/nodes/{u}"),
                Some(json!([{"op": "add", "path": "/extra/k", "value": "v"}])),
            )
            .await;
        assert_eq!(p["driver_info"]["deploy_password"], "******", "{p}");
    }

    let tls = cl.grpc_tls.clone().expect("the cluster's gRPC TLS");
    for (i, (_, port)) in cl.conductors.iter().enumerate() {
        let url = format!("https://127.0.0.1:{port}");
        // the cluster's certificate is accepted
        let s = status_at(&url, Some(&tls)).await.unwrap_or_else(|e| panic!("c{}: {e}", i + 1));
        assert_eq!(s.id, format!("c{}", i + 1));
        // no client certificate: refused by the conductor
        let no_cert = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem))
            .domain_name("127.0.0.1");
        let refused = async {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .tls_config(no_cert)
                .unwrap()
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            ferric_common::proto::conductor_client::ConductorClient::new(ch)
                .get_conductor_status(ferric_common::proto::Empty {})
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        assert!(refused.is_err(), "c{} answered a client without a certificate", i + 1);
        // a certificate of another CA: refused
        let other_ca = TestCa::new(certs.path(), &format!("other{i}"));
        let stranger = other_ca.issue(&format!("stranger{i}"), &["127.0.0.1"]);
        let foreign = ferric_common::tls::GrpcTls { ca: ca.ca_file.clone(), cert: stranger.cert, key: stranger.key };
        assert!(status_at(&url, Some(&foreign)).await.is_err(), "c{} answered a certificate of another CA", i + 1);
        // plaintext: no answer
        assert!(status_at(&format!("http://127.0.0.1:{port}"), None).await.is_err(), "c{} answered plaintext", i + 1);
        // and the shared builder itself refuses an https URL without TLS settings
        let e = status_at(&url, None).await.unwrap_err();
        assert!(e.contains("grpc.ca_file"), "{e}");
    }
    // every process's database connections are TLS (plaintext is refused
    // anyway): the ones open now say so
    let ssl = psql(
        cl.pg.port(),
        "sslmode=require",
        "select count(*), bool_and(s.ssl) from pg_stat_ssl s join pg_stat_activity a using (pid) \
         where a.datname = 'ferric_cluster' and a.pid <> pg_backend_pid()",
    )
    .unwrap();
    let (n, all_ssl) = ssl.split_once('|').unwrap();
    assert!(n.parse::<u32>().unwrap() >= 3 && all_ssl == "t", "connections and whether all are TLS: {ssl}");

    let log = std::fs::read_to_string(cl.dir.path().join("c1.log")).unwrap();
    assert!(log.contains("TLS handshake refused"), "c1 logged no refused handshake");
    assert!(!log.contains("pw-mtls"), "a secret reached c1's log");
}
