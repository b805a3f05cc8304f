//! End to end: an enrolled pod's DNS queries, to whatever nameserver over UDP or TCP, are
//! captured and answered by its node's ztunnel from the mesh's services.

#![forbid(unsafe_code)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambient_lab::http::connect_from;
use ambient_lab::manifest;
use ambient_lab::sandbox::run_test;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::dns::wire::op::{Message, MessageType, OpCode, Query, ResponseCode};
use ztunnel::dns::wire::rr::{Name, RecordType};
use ztunnel::inpod::netns::Netns;

/// The pod's configured nameserver: nothing listens there; capture sends port 53 to ztunnel.
const NAMESERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53)), 53);
/// A local stub resolver's address (systemd-resolved's): loopback, captured all the same.
const STUB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        qtype,
    ));
    m.to_vec().expect("encodable")
}

/// Asks over UDP from a plain socket in `netns`, as an app would.
async fn ask_udp(netns: &Netns, server: SocketAddr, name: &str) -> Result<Message, Error> {
    let socket = netns.run(|| std::net::UdpSocket::bind("0.0.0.0:0"))??;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UdpSocket::from_std(socket)?;
    let id = query_id(name);
    socket
        .send_to(&query(id, name, RecordType::A), server)
        .await?;
    let mut buf = vec![0u8; 1500];
    let (len, from) = tokio::time::timeout(ASK_TIMEOUT, socket.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no UDP answer for {name} from {server}"))??;
    // The answer appears to come from the server the app asked.
    if from != server {
        return Err(format!("answer from {from}, asked {server}").into());
    }
    let answer = Message::from_vec(&buf[..len])?;
    if answer.id != id {
        return Err(format!("answer id {} for query id {id}", answer.id).into());
    }
    Ok(answer)
}

/// Asks over TCP (2-byte length prefix) from a plain socket in `netns`.
async fn ask_tcp(
    netns: &Netns,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<Message, Error> {
    let exchange = async {
        let mut stream = connect_from(netns, server).await?;
        let body = query(7, name, qtype);
        let mut framed = u16::try_from(body.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        stream.write_all(&framed).await?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, Error>(Message::from_vec(&answer)?)
    };
    tokio::time::timeout(ASK_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no TCP answer for {name} from {server}"))?
}

/// A query id that differs between names (no randomness needed).
fn query_id(name: &str) -> u16 {
    name.bytes()
        .fold(0x5a5au16, |h, b| h.rotate_left(5) ^ u16::from(b))
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

/// The name resolves to exactly `ip`, authoritatively.
fn expect_address(m: &Message, name: &str, ip: Ipv4Addr) -> Result<(), Error> {
    if m.response_code != ResponseCode::NoError || addresses(m) != vec![IpAddr::V4(ip)] {
        return Err(format!(
            "{name}: {} with {:?}, wanted {ip}",
            m.response_code,
            addresses(m)
        )
        .into());
    }
    if !m.authoritative || m.queries.len() != 1 || m.answers[0].ttl != 30 {
        return Err(format!("{name}: unexpected response shape {m:?}").into());
    }
    Ok(())
}

fn expect_code(m: &Message, name: &str, code: ResponseCode) -> Result<(), Error> {
    if m.response_code != code || !m.answers.is_empty() {
        return Err(format!(
            "{name}: {} with {:?}, wanted {code} and no answers",
            m.response_code,
            addresses(m)
        )
        .into());
    }
    Ok(())
}

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
