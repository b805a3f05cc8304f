//! The ratings role: `GET /ratings/<id>` answers the stars each reviewer gave.

use std::collections::BTreeMap;
use std::future::Future;

use hyper::StatusCode;

use crate::model::RatingsResponse;
use crate::pod::PodInfo;
use crate::route::{self, Route};
use crate::server::{Reply, Role, RoleRequest};

/// The stars by reviewer; the same for every product.
pub const RATINGS: &[(&str, u8)] = &[("Reviewer1", 5), ("Reviewer2", 4)];

/// Serves ratings.
pub struct Ratings {
    pod: PodInfo,
}

impl Ratings {
    pub fn new(pod: PodInfo) -> Self {
        Self { pod }
    }

    fn answer(&self, request: &RoleRequest) -> Reply {
        match route::id_under(&request.path, "/ratings") {
            Route::Id(id) => Reply::json(
                StatusCode::OK,
                &RatingsResponse {
                    id,
                    pod: self.pod.name.clone(),
                    ratings: RATINGS
                        .iter()
                        .map(|(reviewer, stars)| ((*reviewer).to_owned(), *stars))
                        .collect::<BTreeMap<_, _>>(),
                },
            ),
            Route::BadId(raw) => Reply::error(
                StatusCode::BAD_REQUEST,
                &self.pod,
                format!("product id {raw:?} is not a number"),
            ),
            Route::NotFound => route::not_found(&self.pod, &request.path),
        }
    }
}

impl Role for Ratings {
    fn name(&self) -> &'static str {
        "ratings"
    }

    fn pod(&self) -> &PodInfo {
        &self.pod
    }

    fn handle(&self, request: RoleRequest) -> impl Future<Output = Reply> + Send {
        let reply = self.answer(&request);
        async move { reply }
    }
}
