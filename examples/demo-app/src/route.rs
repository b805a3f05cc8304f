//! Matching the paths the roles serve.

use hyper::StatusCode;

use crate::pod::PodInfo;
use crate::server::Reply;

/// Where a `PREFIX/<id>` path leads.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `PREFIX/<number>`.
    Id(u32),
    /// `PREFIX/<something else>`.
    BadId(String),
    /// Not under `PREFIX`, or more than one segment below it.
    NotFound,
}

/// Matches `path` against `prefix/<id>` (`prefix` without a trailing slash).
pub fn id_under(path: &str, prefix: &str) -> Route {
    let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
        return Route::NotFound;
    };
    if rest.is_empty() || rest.contains('/') {
        return Route::NotFound;
    }
    match rest.parse() {
        Ok(id) => Route::Id(id),
        Err(_) => Route::BadId(rest.to_owned()),
    }
}

/// The 404 every role answers for paths it does not serve.
pub fn not_found(pod: &PodInfo, path: &str) -> Reply {
    Reply::error(StatusCode::NOT_FOUND, pod, format!("no route for {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_ids() {
        assert_eq!(id_under("/ratings/7", "/ratings"), Route::Id(7));
        assert_eq!(id_under("/ratings/x", "/ratings"), Route::BadId("x".into()));
        assert_eq!(id_under("/ratings/", "/ratings"), Route::NotFound);
        assert_eq!(id_under("/ratings", "/ratings"), Route::NotFound);
        assert_eq!(id_under("/ratings/1/2", "/ratings"), Route::NotFound);
        assert_eq!(id_under("/ratingsx/1", "/ratings"), Route::NotFound);
    }
}
