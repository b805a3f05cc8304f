//! A DNS client for the tests: a pod's queries over UDP and TCP, and checks of the answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ambient_lab::http::connect_from;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::dns::wire::op::{Message, MessageType, OpCode, Query, ResponseCode};
use ztunnel::dns::wire::rr::{Name, RecordType};
use ztunnel::inpod::netns::Netns;

/// The pod's configured nameserver: nothing listens there; capture sends port 53 to ztunnel.
pub const NAMESERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 53)), 53);
/// A local stub resolver's address (systemd-resolved's): loopback, captured all the same.
pub const STUB: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);
pub const ASK_TIMEOUT: Duration = Duration::from_secs(3);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

pub fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        qtype,
    ));
    m.to_vec().expect("encodable")
}

/// Asks over UDP from a plain socket in `netns`, as an app would.
pub async fn ask_udp(netns: &Netns, server: SocketAddr, name: &str) -> Result<Message, Error> {
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
pub async fn ask_tcp(
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
pub fn query_id(name: &str) -> u16 {
    name.bytes()
        .fold(0x5a5au16, |h, b| h.rotate_left(5) ^ u16::from(b))
}

pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}

/// The name resolves to exactly `ip`, authoritatively.
pub fn expect_address(m: &Message, name: &str, ip: Ipv4Addr) -> Result<(), Error> {
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

pub fn expect_code(m: &Message, name: &str, code: ResponseCode) -> Result<(), Error> {
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
