//! Process-wide memory settings of the proxies (ztunnel and waypoint).

/// Turns transparent huge pages off for this process.
///
/// A proxy's heap is many small buffers spread over the allocator's arenas; with THP set to
/// `always` (common on distributions) each touched 2 MiB region becomes resident in full,
/// which made an idle ztunnel hold ~16 MB of heap instead of ~2.5 MB. Small pages cost a few
/// more TLB misses, which the relay's large copies do not notice. Memory faulted before the
/// call keeps its pages, so call it first thing in `main`.
pub fn avoid_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Old kernels without PR_SET_THP_DISABLE: only memory use is affected.
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_are_off_after_the_call() {
        super::avoid_transparent_huge_pages();
        assert!(nix::sys::prctl::get_thp_disable().unwrap());
    }
}
