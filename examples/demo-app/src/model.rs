//! The JSON bodies the roles exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /ratings/<id>` on ratings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatingsResponse {
    pub id: u32,
    pub pod: String,
    /// Stars (1 to 5) by reviewer.
    pub ratings: BTreeMap<String, u8>,
}

/// A rating as reviews shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rating {
    pub stars: u8,
    pub color: String,
}

/// One review.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    pub reviewer: String,
    pub text: String,
    /// Absent in v1, and when ratings could not be fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<Rating>,
}

/// `GET /reviews/<id>` on reviews.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewsResponse {
    pub id: u32,
    pub version: String,
    pub pod: String,
    pub reviews: Vec<Review>,
    /// Why the ratings are missing (v2 and v3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratings_error: Option<String>,
}

/// An error answer of any role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    pub pod: String,
}
