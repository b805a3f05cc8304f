//! The productpage role: `GET /productpage` fetches the reviews of product 0 and renders
//! them, with the reviews version and the pods that answered.

use std::fmt::Write as _;
use std::future::Future;

use hyper::StatusCode;

use crate::access_log::OutboundCall;
use crate::model::ReviewsResponse;
use crate::pod::PodInfo;
use crate::route;
use crate::server::{Reply, Role, RoleRequest};
use crate::upstream;

/// The product the page shows.
pub const PRODUCT_ID: u32 = 0;
const TITLE: &str = "The Comedy of Errors";

/// Serves the product page.
pub struct Productpage {
    pod: PodInfo,
    reviews_url: String,
}

impl Productpage {
    /// `reviews_url` is the base URL of reviews (`http://reviews:9080`).
    pub fn new(pod: PodInfo, reviews_url: String) -> Self {
        Self { pod, reviews_url }
    }

    async fn answer(&self, request: RoleRequest) -> Reply {
        match request.path.as_str() {
            "/" => Reply::html(StatusCode::OK, self.index()),
            "/productpage" => {
                let mut calls: Vec<OutboundCall> = Vec::new();
                let url = upstream::join(&self.reviews_url, &format!("/reviews/{PRODUCT_ID}"));
                let reviews = upstream::get_json::<ReviewsResponse>(
                    url,
                    request.propagated_headers(),
                    &mut calls,
                )
                .await;
                // Like bookinfo, the page renders (status 200) even when reviews failed.
                Reply::html(StatusCode::OK, self.page(reviews)).with_outbound(calls)
            }
            other => route::not_found(&self.pod, other),
        }
    }

    fn index(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html><head><title>Bookinfo</title></head><body>\n\
             <p>productpage-pod: {}</p>\n\
             <p><a href=\"/productpage\">/productpage</a></p>\n</body></html>\n",
            escape(&self.pod.qualified_name())
        )
    }

    fn page(&self, reviews: Result<ReviewsResponse, upstream::Error>) -> String {
        // One fact per line, so the page reads (and greps) well in a terminal too.
        let mut out = String::new();
        let _ = writeln!(out, "<!DOCTYPE html>");
        let _ = writeln!(
            out,
            "<html><head><title>Bookinfo: {TITLE}</title></head><body>"
        );
        let _ = writeln!(out, "<h1>{TITLE}</h1>");
        let _ = writeln!(
            out,
            "<p>productpage-pod: {}</p>",
            escape(&self.pod.qualified_name())
        );
        match reviews {
            Ok(reviews) => {
                let _ = writeln!(out, "<p>reviews-version: {}</p>", escape(&reviews.version));
                let _ = writeln!(out, "<p>reviews-pod: {}</p>", escape(&reviews.pod));
                if let Some(error) = &reviews.ratings_error {
                    let _ = writeln!(out, "<p>ratings-error: {}</p>", escape(error));
                }
                let _ = writeln!(out, "<ul>");
                for review in &reviews.reviews {
                    let rating = match &review.rating {
                        Some(r) => {
                            format!(" [{} {}/5 {}]", stars(r.stars), r.stars, escape(&r.color))
                        }
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "<li>{}: {}{rating}</li>",
                        escape(&review.reviewer),
                        escape(&review.text)
                    );
                }
                let _ = writeln!(out, "</ul>");
            }
            Err(e) => {
                let _ = writeln!(out, "<p>reviews-error: {}</p>", escape(&e.to_string()));
            }
        }
        let _ = writeln!(out, "</body></html>");
        out
    }
}

impl Role for Productpage {
    fn name(&self) -> &'static str {
        "productpage"
    }

    fn pod(&self) -> &PodInfo {
        &self.pod
    }

    fn handle(&self, request: RoleRequest) -> impl Future<Output = Reply> + Send {
        self.answer(request)
    }
}

/// `stars` filled stars out of five.
fn stars(stars: u8) -> String {
    let filled = usize::from(stars.min(5));
    "★".repeat(filled) + &"☆".repeat(5 - filled)
}

/// Escapes text for HTML content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_stars_and_escapes() {
        assert_eq!(stars(4), "★★★★☆");
        assert_eq!(stars(9), "★★★★★");
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }
}
