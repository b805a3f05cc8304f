//! The reviews role: `GET /reviews/<id>` answers the reviews of a product. v1 shows no
//! ratings; v2 (black stars) and v3 (red stars) fetch them from ratings.

use std::fmt;
use std::future::Future;

use hyper::StatusCode;

use crate::access_log::OutboundCall;
use crate::model::{Rating, RatingsResponse, Review, ReviewsResponse};
use crate::pod::PodInfo;
use crate::route::{self, Route};
use crate::server::{Reply, Role, RoleRequest};
use crate::upstream;

/// The reviews of every product: reviewer and text.
pub const REVIEWS: &[(&str, &str)] = &[
    (
        "Reviewer1",
        "Fast and very funny: two pairs of twins, one town, and nobody knows who is who.",
    ),
    (
        "Reviewer2",
        "Clever wordplay throughout, although the ending ties up a little too neatly.",
    ),
];

/// Which reviews behaviour to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Version {
    /// No ratings.
    V1,
    /// Ratings as black stars.
    V2,
    /// Ratings as red stars.
    V3,
}

impl Version {
    /// The colour of the stars, for the versions that show ratings.
    pub fn star_color(self) -> Option<&'static str> {
        match self {
            Version::V1 => None,
            Version::V2 => Some("black"),
            Version::V3 => Some("red"),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
            Version::V3 => "v3",
        })
    }
}

/// Serves reviews.
pub struct Reviews {
    pod: PodInfo,
    version: Version,
    ratings_url: String,
}

impl Reviews {
    /// `ratings_url` is the base URL of ratings (`http://ratings:9080`).
    pub fn new(pod: PodInfo, version: Version, ratings_url: String) -> Self {
        Self {
            pod,
            version,
            ratings_url,
        }
    }

    async fn answer(&self, request: RoleRequest) -> Reply {
        let id = match route::id_under(&request.path, "/reviews") {
            Route::Id(id) => id,
            Route::BadId(raw) => {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    &self.pod,
                    format!("product id {raw:?} is not a number"),
                );
            }
            Route::NotFound => return route::not_found(&self.pod, &request.path),
        };

        let mut calls: Vec<OutboundCall> = Vec::new();
        let mut reviews: Vec<Review> = REVIEWS
            .iter()
            .map(|(reviewer, text)| Review {
                reviewer: (*reviewer).to_owned(),
                text: (*text).to_owned(),
                rating: None,
            })
            .collect();
        let mut ratings_error = None;

        if let Some(color) = self.version.star_color() {
            let url = upstream::join(&self.ratings_url, &format!("/ratings/{id}"));
            match upstream::get_json::<RatingsResponse>(
                url,
                request.propagated_headers(),
                &mut calls,
            )
            .await
            {
                Ok(ratings) => {
                    for review in &mut reviews {
                        review.rating =
                            ratings.ratings.get(&review.reviewer).map(|&stars| Rating {
                                stars,
                                color: color.to_owned(),
                            });
                    }
                }
                // Like bookinfo: the reviews still answer, without the stars.
                Err(e) => ratings_error = Some(format!("ratings unavailable: {e}")),
            }
        }

        Reply::json(
            StatusCode::OK,
            &ReviewsResponse {
                id,
                version: self.version.to_string(),
                pod: self.pod.name.clone(),
                reviews,
                ratings_error,
            },
        )
        .with_outbound(calls)
    }
}

impl Role for Reviews {
    fn name(&self) -> &'static str {
        "reviews"
    }

    fn pod(&self) -> &PodInfo {
        &self.pod
    }

    fn handle(&self, request: RoleRequest) -> impl Future<Output = Reply> + Send {
        self.answer(request)
    }
}
