//! The files role: `GET /<name>` answers the file `<name>` of a directory, read anew for
//! every request (so a test can change what it serves: a JWKS document during a key
//! rotation, for example). Names are single path segments; nothing outside the directory is
//! reachable.

use std::future::Future;
use std::path::PathBuf;

use hyper::StatusCode;

use crate::pod::PodInfo;
use crate::server::{Reply, Role, RoleRequest};

/// Serves the files of one directory.
pub struct Files {
    pod: PodInfo,
    dir: PathBuf,
}

impl Files {
    pub fn new(pod: PodInfo, dir: PathBuf) -> Self {
        Self { pod, dir }
    }

    fn answer(&self, request: &RoleRequest) -> Reply {
        let name = request.path.trim_start_matches('/');
        let plain = !name.is_empty()
            && !name.contains('/')
            && name != "."
            && name != ".."
            && !name.starts_with('.');
        if !plain {
            return Reply::error(StatusCode::NOT_FOUND, &self.pod, "no such file");
        }
        match std::fs::read(self.dir.join(name)) {
            Ok(body) => Reply {
                status: StatusCode::OK,
                content_type: if name.ends_with(".json") {
                    "application/json"
                } else {
                    "application/octet-stream"
                },
                body: body.into(),
                outbound: Vec::new(),
            },
            Err(e) => Reply::error(StatusCode::NOT_FOUND, &self.pod, format!("{name}: {e}")),
        }
    }
}

impl Role for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn pod(&self) -> &PodInfo {
        &self.pod
    }

    fn handle(&self, request: RoleRequest) -> impl Future<Output = Reply> + Send {
        let reply = self.answer(&request);
        async move { reply }
    }
}

#[cfg(test)]
mod tests {
    use hyper::{HeaderMap, Method};

    use super::*;

    fn get(files: &Files, path: &str) -> StatusCode {
        files
            .answer(&RoleRequest {
                method: Method::GET,
                path: path.into(),
                headers: HeaderMap::new(),
            })
            .status
    }

    #[test]
    fn serves_the_directory_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.json"), "{}").unwrap();
        let files = Files::new(PodInfo::from_env(), dir.path().to_path_buf());
        assert_eq!(get(&files, "/keys.json"), StatusCode::OK);
        for path in ["/", "/missing", "/../etc/passwd", "/a/b", "/.hidden"] {
            assert_eq!(get(&files, path), StatusCode::NOT_FOUND, "{path}");
        }
    }
}
