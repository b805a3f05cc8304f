//! Stage 4: fault injection: a delay (response flag `DI`), then maybe an abort (`FI`)
//! answered instead of forwarding.

use bytes::Bytes;
use http::Response;

use super::{Answer, Exchange, full};
use crate::l7::route::Route;

/// Draws the route's fault for this request; waits out a delay, answers an abort.
pub async fn inject<B>(x: &mut Exchange<'_, B>, route: &Route) -> Result<(), Answer> {
    let Some(fault) = &route.fault else {
        return Ok(());
    };
    let injection = fault.decide(&mut rand::rng());
    if let Some(delay) = injection.delay {
        tokio::time::sleep(delay).await;
        x.log.flags = "DI";
    }
    if let Some(abort) = injection.abort {
        x.log.flags = "FI";
        let (parts, ()) = abort.response().into_parts();
        let body = full(Bytes::from_static(b"fault filter abort"));
        return Err(Answer::Response(Response::from_parts(parts, body)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ambient_proto::ambient::waypoint::v1 as pb;
    use http_body_util::BodyExt;

    use super::*;
    use crate::pipeline::testing::{Fixture, get};

    fn route_with(fault: pb::Fault) -> Fixture {
        Fixture::one_route(|r| r.fault = Some(fault))
    }

    fn delay(ms: u64) -> Option<pb::FaultDelay> {
        Some(pb::FaultDelay {
            percent: 100.0,
            delay_ms: ms,
        })
    }

    fn abort(http_status: u32, grpc_status: u32) -> Option<pb::FaultAbort> {
        Some(pb::FaultAbort {
            percent: 100.0,
            http_status,
            grpc_status,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_waits_and_is_flagged_di() {
        let f = route_with(pb::Fault {
            delay: delay(1500),
            abort: None,
        });
        let mut x = f.exchange(get("/"));
        let started = tokio::time::Instant::now();
        let route = &f.table().routes()[0];
        assert!(inject(&mut x, route).await.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(x.log.flags, "DI");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_answers_with_its_status_flagged_fi() {
        let f = route_with(pb::Fault {
            delay: delay(200),
            abort: abort(503, 0),
        });
        let mut x = f.exchange(get("/"));
        let started = tokio::time::Instant::now();
        let Err(Answer::Response(r)) = inject(&mut x, &f.table().routes()[0]).await else {
            panic!("aborted")
        };
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "delayed first"
        );
        assert_eq!(r.status(), 503);
        assert_eq!(x.log.flags, "FI");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "fault filter abort");
    }

    #[tokio::test]
    async fn a_grpc_abort_is_a_200_with_grpc_status() {
        let f = route_with(pb::Fault {
            delay: None,
            abort: abort(0, 14),
        });
        let mut x = f.exchange(get("/"));
        let Err(Answer::Response(r)) = inject(&mut x, &f.table().routes()[0]).await else {
            panic!("aborted")
        };
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
    }

    #[tokio::test]
    async fn no_fault_goes_on() {
        let f = Fixture::new();
        let mut x = f.exchange(get("/"));
        assert!(inject(&mut x, &f.table().routes()[0]).await.is_ok());
        assert_eq!(x.log.flags, "-");
    }
}
