//! ZDS transport: protobuf messages over a unix SEQPACKET socket, one message per packet,
//! with a pod's network namespace passed alongside `AddWorkload` as an SCM_RIGHTS fd.
//!
//! The node agent listens ([`ZdsListener`]); ztunnel connects ([`ZdsConnection::connect`]),
//! says [`ZdsHello`](crate::istio::workload::zds::ZdsHello), and then answers every request
//! with an ack.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use prost::Message;
use tokio_seqpacket::ancillary::{AncillaryMessageWriter, OwnedAncillaryMessage};
use tokio_seqpacket::{UnixSeqpacket, UnixSeqpacketListener};

/// Largest ZDS message we accept; real ones are a few hundred bytes.
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("ZDS socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("ZDS peer closed the connection")]
    Closed,
    #[error("ZDS message larger than {MAX_MESSAGE} bytes")]
    Truncated,
    #[error("malformed ZDS message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ZDS protocol: {0}")]
    Protocol(String),
}

/// The node agent's listening socket.
pub struct ZdsListener {
    inner: UnixSeqpacketListener,
}

impl ZdsListener {
    /// Binds `path`, replacing a stale socket file left by an earlier run.
    pub fn bind(path: &Path) -> Result<Self, ZdsError> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(ZdsListener {
            inner: UnixSeqpacketListener::bind(path)?,
        })
    }

    pub async fn accept(&mut self) -> Result<ZdsConnection, ZdsError> {
        Ok(ZdsConnection {
            inner: self.inner.accept().await?,
        })
    }
}

/// One ZDS connection, usable from either end.
pub struct ZdsConnection {
    inner: UnixSeqpacket,
}

impl ZdsConnection {
    pub async fn connect(path: &Path) -> Result<Self, ZdsError> {
        Ok(ZdsConnection {
            inner: UnixSeqpacket::connect(path).await?,
        })
    }

    /// Sends one message, with `fd` attached when given.
    pub async fn send<M: Message>(&self, msg: &M, fd: Option<&OwnedFd>) -> Result<(), ZdsError> {
        let buf = msg.encode_to_vec();
        match fd {
            None => {
                self.inner.send(&buf).await?;
            }
            Some(fd) => {
                let mut space = [0u8; 64];
                let mut ancillary = AncillaryMessageWriter::new(&mut space);
                ancillary
                    .add_fds([fd.as_fd()])
                    .map_err(|_| ZdsError::Protocol("no room for the fd".into()))?;
                self.inner.send_with_ancillary(&buf, &mut ancillary).await?;
            }
        }
        Ok(())
    }

    /// Receives one message and the fd that came with it, if any.
    pub async fn recv<M: Message + Default>(&self) -> Result<(M, Option<OwnedFd>), ZdsError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut space = [0u8; 64];
        let (info, ancillary) = self.inner.recv_with_ancillary(&mut buf, &mut space).await?;
        // Take ownership of any fds first, so they are closed if the message turns out bad.
        let mut fd = None;
        for m in ancillary.into_messages() {
            if let OwnedAncillaryMessage::FileDescriptors(fds) = m {
                for f in fds {
                    if fd.is_none() {
                        fd = Some(f);
                    }
                }
            }
        }
        if info.truncated() {
            return Err(ZdsError::Truncated);
        }
        let n = info.bytes_read();
        if n == 0 {
            return Err(ZdsError::Closed);
        }
        Ok((M::decode(&buf[..n])?, fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::workload::zds::{
        AddWorkload, WorkloadInfo, WorkloadRequest, workload_request::Payload,
    };
    use std::os::fd::AsRawFd;

    #[tokio::test]
    async fn passes_messages_and_fds() {
        let dir = tempfile_dir();
        let path = dir.join("zds.sock");
        let mut listener = ZdsListener::bind(&path).unwrap();
        let client = tokio::spawn({
            let path = path.clone();
            async move { ZdsConnection::connect(&path).await.unwrap() }
        });
        let server = listener.accept().await.unwrap();
        let client = client.await.unwrap();

        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        let fd: OwnedFd = file.into();
        let req = WorkloadRequest {
            payload: Some(Payload::Add(AddWorkload {
                uid: "Kubernetes//Pod/default/a".into(),
                workload_info: Some(WorkloadInfo {
                    name: "a".into(),
                    namespace: "default".into(),
                    service_account: "sa".into(),
                }),
            })),
        };
        server.send(&req, Some(&fd)).await.unwrap();
        let (got, got_fd) = client.recv::<WorkloadRequest>().await.unwrap();
        assert_eq!(got, req);
        let got_fd = got_fd.expect("fd passed");
        assert_ne!(got_fd.as_raw_fd(), fd.as_raw_fd());
        let a = std::fs::metadata(format!("/proc/self/fd/{}", got_fd.as_raw_fd())).unwrap();
        let b = std::fs::metadata("/proc/self/ns/net").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(a.ino(), b.ino(), "the same namespace arrives");

        drop(server);
        assert!(matches!(
            client.recv::<WorkloadRequest>().await,
            Err(ZdsError::Closed)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn garbage_is_a_decode_error() {
        let (a, b) = UnixSeqpacket::pair().unwrap();
        a.send(&[0xff, 0xff, 0xff]).await.unwrap();
        let b = ZdsConnection { inner: b };
        assert!(matches!(
            b.recv::<WorkloadRequest>().await,
            Err(ZdsError::Decode(_))
        ));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("zds-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
