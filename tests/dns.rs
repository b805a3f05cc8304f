//! End to end: an enrolled pod's DNS queries, to whatever nameserver over UDP or TCP, are
//! captured and answered by its node's ztunnel from the mesh's services.

#![forbid(unsafe_code)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use ambient_lab::http::connect_from;
use ambient_lab::manifest;
use ambient_lab::sandbox::run_test;
use common::dns::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::dns::wire::op::ResponseCode;
use ztunnel::dns::wire::rr::RecordType;

#[test]
fn pod_queries_are_answered_by_ztunnel() {
    run_test("pod_queries_are_answered_by_ztunnel", |dir| async move {
        let data_db = (
            "data-db.yaml",
            format!(
                "{}---\n{}",
                manifest::namespace("data", false),
                manifest::service(
                    "db",
                    "data",
                    Ipv4Addr::new(10, 96, 0, 20),
                    &[("app", "db")],
                    &[("pg", 5432, 5432)],
                )
            ),
        );
        let mesh = cluster(
            &dir,
            vec![
                PodSpec::new("client", "node-a"),
                PodSpec::new("server", "node-b").echo(),
            ],
            vec![echo_service(), data_db],
            &[],
            |_| {},
        )
        .await?;
        let client = mesh.lab.pod("default", "client").netns.clone();
        let echo_ip = Ipv4Addr::new(10, 96, 0, 10);

        // The first answer may wait for the configuration to arrive.
        eventually(Duration::from_secs(10), || async {
            let m = ask_udp(&client, NAMESERVER, "echo.default.svc.cluster.local")
                .await
                .map_err(|e| e.to_string())?;
            expect_address(&m, "echo", echo_ip).map_err(|e| e.to_string())
        })
        .await?;

        // All the forms a pod may use, over UDP and over TCP.
        for name in [
            "echo.default.svc.cluster.local",
            "echo.default.svc.cluster.local.",
            "echo.default.svc",
            "echo.default",
            "echo",
            "ECHO.Default",
        ] {
            expect_address(&ask_udp(&client, NAMESERVER, name).await?, name, echo_ip)?;
            let tcp = ask_tcp(&client, NAMESERVER, name, RecordType::A).await?;
            expect_address(&tcp, name, echo_ip)?;
        }
        // A loopback stub resolver's address is captured too.
        expect_address(&ask_udp(&client, STUB, "echo").await?, "echo", echo_ip)?;

        // Another namespace's service needs its namespace in the name.
        let db_ip = Ipv4Addr::new(10, 96, 0, 20);
        expect_address(&ask_udp(&client, NAMESERVER, "db.data").await?, "db", db_ip)?;
        let m = ask_tcp(
            &client,
            NAMESERVER,
            "db.data.svc.cluster.local",
            RecordType::A,
        )
        .await?;
        expect_address(&m, "db", db_ip)?;
        let m = ask_udp(&client, NAMESERVER, "db").await?;
        expect_code(&m, "db", ResponseCode::NXDomain)?;

        // Unknown names do not exist (nothing is forwarded anywhere), over both transports.
        for name in ["nope.default.svc.cluster.local", "example.com", "echo.nope"] {
            let m = ask_udp(&client, NAMESERVER, name).await?;
            expect_code(&m, name, ResponseCode::NXDomain)?;
            let m = ask_tcp(&client, NAMESERVER, name, RecordType::A).await?;
            expect_code(&m, name, ResponseCode::NXDomain)?;
        }
        // A known name with no IPv6 address: no answers, no error.
        let m = ask_tcp(&client, NAMESERVER, "echo", RecordType::AAAA).await?;
        expect_code(&m, "echo AAAA", ResponseCode::NoError)?;

        // A service added later resolves once it is pushed.
        let late_ip = Ipv4Addr::new(10, 96, 0, 77);
        let m = ask_udp(&client, NAMESERVER, "late").await?;
        expect_code(&m, "late", ResponseCode::NXDomain)?;
        mesh.write_manifest(
            "late-svc.yaml",
            &manifest::service(
                "late",
                "default",
                late_ip,
                &[("app", "late")],
                &[("http", 80, 8080)],
            ),
        )?;
        eventually(Duration::from_secs(10), || async {
            let m = ask_udp(&client, NAMESERVER, "late")
                .await
                .map_err(|e| e.to_string())?;
            expect_address(&m, "late", late_ip).map_err(|e| e.to_string())
        })
        .await?;
        let m = ask_tcp(&client, NAMESERVER, "late.default.svc", RecordType::A).await?;
        expect_address(&m, "late", late_ip)?;

        // Garbage to port 53 gets nothing back and harms nothing.
        let socket = client.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
        socket.send_to(b"not dns at all", NAMESERVER)?;
        let mut stream = connect_from(&client, NAMESERVER).await?;
        stream.write_all(&[0, 3, 1, 2, 3]).await?;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(ASK_TIMEOUT, stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "a malformed TCP query closes the connection: {closed:?}"
        );
        expect_address(
            &ask_udp(&client, NAMESERVER, "echo").await?,
            "echo",
            echo_ip,
        )?;

        // The client's ztunnel counted them.
        let metrics = mesh.metrics("node-a").await?;
        for (code, at_least) in [("NOERROR", 15.0), ("NXDOMAIN", 7.0), ("MALFORMED", 2.0)] {
            let n = metric(
                &metrics,
                "istio_dns_requests_total",
                &[("response_code", code)],
            );
            assert!(n >= at_least, "{code}: {n} < {at_least}\n{metrics}");
        }
        TestResult::Ok(())
    });
}
