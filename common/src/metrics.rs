//! Every Prometheus metric Ferric records, by name, in one place: a
//! dashboard or an alert is written against this list (and
//! `docs/operations.md`), and a rename is one edit here.
//!
//! Each process renders its own at `/metrics` (the API's listener; a
//! conductor's HTTP listener). Labels are bounded: methods the API serves
//! (others share `other`), outcomes, states, publishers — never a node or a
//! client-chosen string.

// ---- API ----------------------------------------------------------------------

/// Counter `{method, status}`: every answered request.
pub const API_REQUESTS_TOTAL: &str = "ferric_api_requests_total";
/// Histogram: seconds from the request's arrival to its answer.
pub const API_REQUEST_SECONDS: &str = "ferric_api_request_seconds";
/// Counter: requests answered 503 at once because `api.max_concurrent_requests` were in handlers.
pub const API_REQUESTS_SHED_TOTAL: &str = "ferric_api_requests_shed_total";
/// Counter: requests cut off by `api.request_timeout_ms`.
pub const API_REQUESTS_TIMED_OUT_TOTAL: &str = "ferric_api_requests_timed_out_total";
/// Counter: node reads (GET node, node lists) answered from all-in-one's answer cache.
pub const API_NODE_CACHE_HITS_TOTAL: &str = "ferric_api_node_cache_hits_total";
/// Counter: node reads rendered from the database where an answer cache exists.
pub const API_NODE_CACHE_MISSES_TOTAL: &str = "ferric_api_node_cache_misses_total";
/// Counter `{kind}`: iPXE scripts served.
pub const IPXE_SCRIPTS_TOTAL: &str = "ferric_ipxe_scripts_total";
/// Counter `{reason}`: iPXE script requests refused.
pub const IPXE_REJECTED_TOTAL: &str = "ferric_ipxe_rejected_total";

// ---- membership ---------------------------------------------------------------

/// Counter: etcd watches found stalled and replaced by a fresh snapshot.
pub const MEMBERSHIP_WATCH_STALLS_TOTAL: &str = "ferric_membership_watch_stalls_total";

// ---- conductor: requests, ownership, fencing ----------------------------------

/// Counter: requests refused because the caller's ring was newer and ours did not catch up.
pub const REQUESTS_REFUSED_STALE_RING_TOTAL: &str = "ferric_requests_refused_stale_ring_total";
/// Counter: API calls that came again after they were applied, answered as applied.
pub const CALLS_REPLAYED_TOTAL: &str = "ferric_calls_replayed_total";
/// Counter: times this conductor fenced itself.
pub const FENCED_TOTAL: &str = "ferric_fenced_total";
/// Gauge: seconds this conductor has not reached the database (0 when it does).
pub const DATABASE_UNREACHABLE_SECONDS: &str = "ferric_database_unreachable_seconds";

// ---- conductor: operations and take-over --------------------------------------

/// Counter `{outcome}`: operation runs that ended (settled, failed, handed_off, stopped).
pub const OPERATIONS_TOTAL: &str = "ferric_operations_total";
/// Gauge: operations running now.
pub const OPERATIONS_IN_FLIGHT: &str = "ferric_operations_in_flight";
/// Gauge: nodes the ring gives this conductor.
pub const OWNED_NODES: &str = "ferric_owned_nodes";
/// Gauge: node locks this conductor holds.
pub const LOCKS_HELD: &str = "ferric_locks_held";
/// Counter: locks held by no live process, released.
pub const ORPHANED_LOCKS_REAPED_TOTAL: &str = "ferric_orphaned_locks_reaped_total";
/// Counter: locks of dead incarnations cleared.
pub const DEAD_LOCKS_CLEARED_TOTAL: &str = "ferric_dead_locks_cleared_total";
/// Counter `{state, outcome}`: nodes taken over from another conductor.
pub const TAKEOVERS_TOTAL: &str = "ferric_takeovers_total";
/// Histogram: seconds one take-over took.
pub const TAKEOVER_SECONDS: &str = "ferric_takeover_seconds";
/// Counter: full take-over passes (every owned node read).
pub const TAKEOVER_FULL_PASSES_TOTAL: &str = "ferric_takeover_full_passes_total";
/// Counter: light take-over passes (indexes only).
pub const TAKEOVER_LIGHT_PASSES_TOTAL: &str = "ferric_takeover_light_passes_total";
/// Counter `{why}`: take-over passes skipped.
pub const TAKEOVER_PASSES_SKIPPED_TOTAL: &str = "ferric_takeover_passes_skipped_total";
/// Gauge: nodes a draining conductor still holds.
pub const DRAIN_NODES_HELD: &str = "ferric_drain_nodes_held";
/// Gauge: operations a draining conductor still runs.
pub const DRAIN_OPERATIONS_IN_FLIGHT: &str = "ferric_drain_operations_in_flight";

// ---- conductor: periodic work -------------------------------------------------

/// Gauge: BMCs the last power sync read at once (at most `power_sync_workers`).
pub const POWER_SYNC_CONCURRENCY: &str = "ferric_power_sync_concurrency";
/// Counter: node history rows pruned.
pub const NODE_HISTORY_PRUNED_TOTAL: &str = "ferric_node_history_pruned_total";
/// Gauge: bytes in the image cache.
pub const IMAGE_CACHE_BYTES: &str = "ferric_image_cache_bytes";
/// Gauge: images in the image cache.
pub const IMAGE_CACHE_IMAGES: &str = "ferric_image_cache_images";
/// Counter: image cache hits.
pub const IMAGE_CACHE_HITS_TOTAL: &str = "ferric_image_cache_hits_total";
/// Counter: images downloaded into the cache.
pub const IMAGE_CACHE_DOWNLOADS_TOTAL: &str = "ferric_image_cache_downloads_total";
/// Counter: images evicted from the cache.
pub const IMAGE_CACHE_EVICTIONS_TOTAL: &str = "ferric_image_cache_evictions_total";
/// Gauge `{publisher}`: boot ISOs published.
pub const BOOT_ISOS_PUBLISHED: &str = "ferric_boot_isos_published";
/// Gauge `{publisher}`: parameter floppies published.
pub const FLOPPIES_PUBLISHED: &str = "ferric_floppies_published";

// ---- machines -----------------------------------------------------------------

/// Counter `{method}`: requests sent to BMCs (Redfish), retries included.
pub const BMC_REQUESTS_TOTAL: &str = "ferric_bmc_requests_total";
/// Counter `{publisher}`: boot ISOs built.
pub const BOOT_ISO_BUILDS_TOTAL: &str = "ferric_boot_iso_builds_total";
/// Gauge: TFTP transfers in progress.
pub const TFTP_ACTIVE_TRANSFERS: &str = "ferric_tftp_active_transfers";
/// Counter `{result}`: TFTP transfers that ended.
pub const TFTP_TRANSFERS_TOTAL: &str = "ferric_tftp_transfers_total";
/// Counter: bytes sent over TFTP.
pub const TFTP_BYTES_SENT_TOTAL: &str = "ferric_tftp_bytes_sent_total";

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The `pub const NAME: &str = "value";` lines of this file.
    fn constants() -> Vec<(String, String)> {
        include_str!("metrics.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": &str = \"")?;
                Some((name.to_string(), rest.strip_suffix("\";")?.to_string()))
            })
            .collect()
    }

    #[test]
    fn names_are_unique_prometheus_names_with_the_ferric_prefix() {
        let names = constants();
        assert!(names.len() > 30, "the constants were not found: {names:?}");
        let mut seen = std::collections::HashSet::new();
        for (c, name) in &names {
            assert!(seen.insert(name), "{name} ({c}) is defined twice");
            assert!(name.starts_with("ferric_"), "{c}: {name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{c}: {name}");
        }
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir()
                && !p.ends_with("target")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// A metric recorded under a name written at the call site escapes
    /// this list: every `counter!`, `gauge!` and `histogram!` of the
    /// workspace names a constant of this module.
    #[test]
    fn every_metric_is_recorded_by_a_name_from_this_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        for krate in ["common", "api-server", "conductor", "deploy", "cli"] {
            rust_files(&root.join(krate).join("src"), &mut files);
        }
        assert!(files.len() > 20, "no sources found under {}", root.display());
        let mut literal = Vec::new();
        for f in files {
            // whitespace removed: a call split over lines is found too
            let text: String = std::fs::read_to_string(&f).unwrap().split_whitespace().collect();
            for m in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                for (at, _) in text.match_indices(m) {
                    literal.push(format!("{}: {}", f.display(), &text[at..(at + 60).min(text.len())]));
                }
            }
        }
        assert!(literal.is_empty(), "metric names written at the call site:\n{}", literal.join("\n"));
    }
}
